"""What scopes and managers share across the process: the live managers and the open scopes.

Scopes are process-wide (a scope opened in one thread closes steps for every run), so a scope
tells every live manager when it opens and closes, and a manager asks here which steps are still
inside a scope. The package's one fork hook and its exit hook live here too.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

#: The attribute under which a run keeps its manager.
ATTR = "_stepsync_manager"


class Member(Protocol):
    """What a live manager answers to (``StepManager`` is the one implementation)."""

    def scope_entered(self, step: int) -> None:
        """A scope of ``step`` opened: it is the current step, and the steps below it close."""

    def scope_exited(self, through: int) -> None:
        """A scope closed: the steps up to ``through`` are complete."""

    def flush(self) -> None:
        """Commit everything pending (``unpatch()`` does, before it undoes the patch)."""

    def finalize(self) -> None:
        """The interpreter is leaving: commit everything and report."""

    def after_fork(self) -> None:
        """This is a forked child: forget what the parent process owns."""


M = TypeVar("M", bound=Member)

#: Guards joining and leaving. Re-entrant: a manager joins while ``attach_once`` holds it, and
#: a weakref callback may run from garbage collection inside a rebuild in the same thread.
_lock = threading.RLock()
#: The managers of unfinished runs, weakly: a run that is gone takes its manager with it.
_members: tuple[weakref.ref[Member], ...] = ()
#: Every open outermost scope (in any thread or task) -> its step.
_open: dict[object, int] = {}
_exit_hook_registered = False


def manager_of(run: Any) -> Any:
    """The manager attached to ``run``, or None."""
    return run.__dict__.get(ATTR)


def attach_once(run: Any, create: Callable[[], M]) -> M:
    """The manager of ``run``; ``create()`` makes it when there is none (one per run)."""
    manager: M | None = manager_of(run)
    if manager is None:
        with _lock:
            manager = manager_of(run)
            if manager is None:
                manager = create()
    return manager


def join(run: Any, member: Member) -> None:
    """Attach ``member`` to ``run`` and make it live: scopes reach it, exit flushes it."""
    global _members, _exit_hook_registered
    with _lock:
        run.__dict__[ATTR] = member
        _members = (*_members, weakref.ref(member, _forget))
        if not _exit_hook_registered:
            # atexit runs the last registered first: wandb registered its teardown at its
            # first wandb.init, before any manager existed, so this flush runs while wandb
            # still accepts data.
            atexit.register(_finalize_all)
            _exit_hook_registered = True


def leave(member: Member) -> None:
    """``member``'s run finished: scopes leave it alone from now on."""
    global _members
    with _lock:
        _members = tuple(ref for ref in _members if ref() is not member)


def _forget(dead: weakref.ref[Member]) -> None:
    global _members
    with _lock:
        _members = tuple(ref for ref in _members if ref is not dead)


def members() -> list[Member]:
    """The live managers (a snapshot: safe to use while others join or leave)."""
    return [member for ref in _members if (member := ref()) is not None]


def open_steps() -> set[int]:
    """The steps that an open scope still holds, in any thread or task."""
    return set(_open.values())


def is_open(step: int) -> bool:
    """True while some thread or task is inside an outermost scope of ``step``."""
    return step in _open.values()


def scope_opened(scope: object, step: int) -> None:
    """An outermost scope of ``step`` opened: every live manager hears of it."""
    _open[scope] = step
    for ref in _members:
        member = ref()
        if member is not None:
            member.scope_entered(step)


def scope_closed(scope: object, step: int) -> None:
    """An outermost scope closed. The last scope of a step to close completes the step; while
    another thread or task is still inside one, only the steps below it are complete."""
    _open.pop(scope, None)  # absent in a forked child: the parent's scopes are not its own
    through = step - 1 if step in _open.values() else step
    for ref in _members:
        member = ref()
        if member is not None:
            member.scope_exited(through)


def _finalize_all() -> None:
    """At interpreter exit: commit everything and report dropped data, run by run."""
    for member in members():
        member.finalize()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()
    _open.clear()  # the scopes of the parent's other threads do not exist here
    for member in members():
        member.after_fork()


# Nothing is committed before a fork: a child that never logs (a DataLoader worker) must change
# nothing, and a child that logs names no step (``_wandb.native_log``), so its rows cannot push
# the run past the steps the parent still holds.
os.register_at_fork(after_in_child=_after_fork_in_child)
