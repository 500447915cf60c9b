"""One manager per wandb run: lookup, scope notifications, exit flush and fork reset."""

from __future__ import annotations

import atexit
import itertools
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from stepsync._errors import NoActiveRunError

if TYPE_CHECKING:
    from stepsync._manager import StepManager

#: The attribute under which a run keeps its manager (a dict lookup on the hot path).
ATTR = "_stepsync_manager"

_lock = threading.Lock()
#: Guards the rebuilding of ``_live`` (a manager may register while ``_lock`` is held). Re-entrant:
#: the weakref callback can run from garbage collection inside a rebuild in the same thread.
_live_lock = threading.RLock()
#: The managers of unfinished runs, as weak references in a tuple: scope entry and exit iterate
#: it twice a step, and iterating a tuple is ~10x cheaper than a WeakSet.
_live: tuple[weakref.ref[StepManager], ...] = ()
_exit_hook_registered = False
#: Every open outermost scope -> its step, in any thread or task (the timer leaves those steps
#: alone). Keyed by the scope object, so entering and leaving are single dict operations, atomic
#: under the GIL: no lock on the per-step path.
open_scopes: dict[object, int] = {}
#: Orders scope entries and ``update_step`` calls: the later one sets the current step.
sequence = itertools.count()
#: ``(sequence number, step)`` of the last scope entered, in any thread.
last_scope: tuple[int, int] | None = None


def active_run() -> Any:
    """``wandb.run``, or ``NoActiveRunError`` when there is none."""
    import wandb

    if wandb.run is None:
        raise NoActiveRunError(
            "stepsync: no active wandb run; call wandb.init() first or pass run="
        )
    return wandb.run


def get_manager(run: Any = None) -> StepManager:
    """The manager of ``run`` (default: ``wandb.run``), created on first use."""
    if run is None:
        run = active_run()
    manager: StepManager | None = run.__dict__.get(ATTR)
    if manager is not None:
        return manager
    from stepsync._config import manager_defaults
    from stepsync._manager import StepManager

    with _lock:
        manager = run.__dict__.get(ATTR)
        if manager is None:
            manager = StepManager(run, **manager_defaults())
    return manager


def register(manager: StepManager, run: Any) -> None:
    """Attach ``manager`` to ``run`` and to the scope notifications; flush it at exit."""
    global _exit_hook_registered, _live
    run.__dict__[ATTR] = manager
    with _live_lock:
        _live = (*_live, weakref.ref(manager, _forget))
    if not _exit_hook_registered:
        # atexit runs last-registered first: wandb registered its teardown at its first
        # wandb.init, before any manager exists, so this flush runs while wandb still accepts data.
        atexit.register(_finalize_all)
        _exit_hook_registered = True


def unregister(manager: StepManager) -> None:
    """Stop notifying ``manager`` of scopes (its run finished)."""
    global _live
    with _live_lock:
        _live = tuple(ref for ref in _live if ref() is not manager)


def _forget(dead: weakref.ref[StepManager]) -> None:
    global _live
    with _live_lock:
        _live = tuple(ref for ref in _live if ref is not dead)


def managers() -> list[StepManager]:
    """The managers of unfinished runs (a snapshot, safe to iterate while others register)."""
    return [manager for ref in _live if (manager := ref()) is not None]


def scope_entered(scope: object, step: int) -> None:
    """``scope``, a ``step_scope(step)``, opened: ``step`` is every manager's current step.

    Managers read the current step from ``last_scope`` when they need it, and take no lock here:
    a scope only raises each manager's frontier (an int compared and stored, inline: this runs
    once per step). A race with another thread can only leave a frontier lower, so a closed step
    waits a little longer for its commit; nothing is lost or reordered.
    """
    global last_scope
    open_scopes[scope] = step
    last_scope = (next(sequence), step)
    for ref in _live:
        manager = ref()
        if manager is not None and step > manager._frontier:
            manager._frontier = step


def scope_exited(scope: object, step: int) -> None:
    """``scope``, the outermost ``step_scope(step)``, closed: commit ``step`` and those below.

    While another thread or task is still inside a scope of ``step``, only the steps below it
    are committed; the last scope of ``step`` to close commits it.
    """
    open_scopes.pop(scope, None)  # absent after a fork: the parent's scopes are not ours
    through = step - 1 if open_scopes and step in open_scopes.values() else step
    for ref in _live:
        manager = ref()
        if manager is None or not (heap := manager._heap):
            continue
        # A peek at the lowest pending step without the lock: an empty scope costs no lock.
        try:
            lowest = heap[0]
        except IndexError:  # another thread committed it meanwhile
            continue
        if lowest <= through:
            manager._scope_exited(through)


def flush_all() -> None:
    """Commit every pending value of every live manager (``unpatch()`` does, before it undoes)."""
    for manager in managers():
        manager.flush()


def _finalize_all() -> None:
    """At interpreter exit: commit everything and report dropped data, run by run."""
    for manager in managers():
        manager.finalize()


def _before_fork() -> None:
    # A fork child may log to the same run: its rows would push wandb's step past the steps
    # this process still buffers, and wandb would drop those. Commit them first.
    for manager in managers():
        manager._flush_before_fork()


def _after_fork_in_child() -> None:
    global _lock, _live_lock
    _lock, _live_lock = threading.Lock(), threading.RLock()
    open_scopes.clear()  # the scopes of the parent's other threads do not exist here
    for manager in managers():
        manager._reset_after_fork()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
