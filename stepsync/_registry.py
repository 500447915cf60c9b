"""One manager per wandb run: lookup, the live managers, exit flush and fork reset."""

from __future__ import annotations

import atexit
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
#: Guards the rebuilding of ``live`` (a manager may register while ``_lock`` is held). Re-entrant:
#: the weakref callback can run from garbage collection inside a rebuild in the same thread.
_live_lock = threading.RLock()
#: The managers of unfinished runs, as weak references in a tuple: entering and leaving a scope
#: iterate it, and iterating a tuple is ~10x cheaper than a WeakSet.
live: tuple[weakref.ref[StepManager], ...] = ()
_exit_hook_registered = False


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
    """Attach ``manager`` to ``run``, make it live (scopes reach it); flush it at exit."""
    global _exit_hook_registered, live
    run.__dict__[ATTR] = manager
    with _live_lock:
        live = (*live, weakref.ref(manager, _forget))
    if not _exit_hook_registered:
        # atexit runs last-registered first: wandb registered its teardown at its first
        # wandb.init, before any manager exists, so this flush runs while wandb still accepts data.
        atexit.register(_finalize_all)
        _exit_hook_registered = True


def unregister(manager: StepManager) -> None:
    """``manager`` is no longer live: its run finished, scopes leave it alone."""
    global live
    with _live_lock:
        live = tuple(ref for ref in live if ref() is not manager)


def _forget(dead: weakref.ref[StepManager]) -> None:
    global live
    with _live_lock:
        live = tuple(ref for ref in live if ref is not dead)


def managers() -> list[StepManager]:
    """The managers of unfinished runs (a snapshot, safe to iterate while others register)."""
    return [manager for ref in live if (manager := ref()) is not None]


def flush_all() -> None:
    """Commit every pending value of every live manager (``unpatch()`` does, before it undoes)."""
    for manager in managers():
        manager.flush()


def _finalize_all() -> None:
    """At interpreter exit: commit everything and report dropped data, run by run."""
    for manager in managers():
        manager.finalize()


def _after_fork_in_child() -> None:
    global _lock, _live_lock
    _lock, _live_lock = threading.Lock(), threading.RLock()
    for manager in managers():
        manager._reset_after_fork()


# Nothing is committed before a fork: a child that never logs (a DataLoader worker) must change
# nothing, and a child that logs names no step (``_wandb.native_log``), so its rows cannot push
# the run past the steps this process still holds.
os.register_at_fork(after_in_child=_after_fork_in_child)
