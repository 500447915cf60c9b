"""The active logical step and producer, held in contextvars.

``step_scope`` marks the step a block of code belongs to; leaving the outermost scope of a step
commits it. Contextvars follow asyncio tasks; ``propagate`` carries them into threads.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

from stepsync import _registry
from stepsync._context import ACTIVE_PRODUCER, ACTIVE_STEP
from stepsync._validate import check_step

if TYPE_CHECKING:
    from stepsync.distributed import ReduceSpec

P = ParamSpec("P")
R = TypeVar("R")

#: Every open outermost scope -> its step, in any thread or task (the idle timer leaves those
#: steps alone). Keyed by the scope object, so entering and leaving are single dict operations.
open_scopes: dict[object, int] = {}
#: Orders scope entries and ``update_step`` calls: the later one sets the current step.
sequence = itertools.count()
#: ``(sequence number, step)`` of the last scope entered, in any thread.
last_scope: tuple[int, int] | None = None


def step_scope(
    step: int, *, sync: Literal["ranks"] | None = None, reduce: ReduceSpec = None
) -> AbstractContextManager[int]:
    """Log everything in this block to logical ``step``; leaving it commits the step.

    Only the outermost scope of a step commits (nested scopes of the same step merge), and the
    commit also happens when the block raises, so what was logged before the error is kept.
    ``sync="ranks"`` combines the step's values across torch.distributed ranks first (``reduce``:
    see ``stepsync.distributed.synced_step_scope``).
    """
    if sync is not None:
        if sync != "ranks":
            raise ValueError(f"stepsync: sync must be None or 'ranks', got {sync!r}")
        return _synced_scope(step, reduce)
    if reduce is not None:
        raise ValueError("stepsync: reduce= needs sync='ranks'")
    if type(step) is not int or step < 0:  # the checks, for anything but a plain int >= 0
        step = check_step(step)
    return _StepScope(step)


class _StepScope:
    """The context manager of ``step_scope``: a small class, as it runs once per training step.

    Entering the outermost scope of a step makes it every manager's current step; leaving it
    commits the step. The registry's bookkeeping is inline (two calls less a step).
    """

    __slots__ = ("_outermost", "_step", "_token")

    def __init__(self, step: int) -> None:
        self._step = step

    def __enter__(self) -> int:
        global last_scope
        step = self._step
        self._outermost = outermost = ACTIVE_STEP.get() != step
        self._token = ACTIVE_STEP.set(step)
        if outermost:
            # No lock: each is one dict, global or int operation, atomic under the GIL. Managers
            # read the current step from ``last_scope``; a scope only raises each one's frontier
            # (steps below it are closed). A race with another thread can only leave a frontier
            # lower, so a closed step waits a little longer for its commit; nothing is lost.
            open_scopes[self] = step
            last_scope = (next(sequence), step)
            for ref in _registry.live:
                manager = ref()
                if manager is not None and step > manager._frontier:
                    manager._frontier = step
        return step

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        ACTIVE_STEP.reset(self._token)
        if not self._outermost:
            return
        step = self._step
        open_scopes.pop(self, None)  # absent after a fork: the parent's scopes are not ours
        # While another thread or task is still inside a scope of this step, only the steps
        # below it commit; the last scope of the step to close commits it.
        through = step - 1 if open_scopes and step in open_scopes.values() else step
        for ref in _registry.live:
            manager = ref()
            if manager is None or not (heap := manager._heap):
                continue
            # A peek at the lowest pending step without the lock: an empty scope takes no lock.
            try:
                lowest = heap[0]
            except IndexError:  # another thread committed it meanwhile
                continue
            if lowest <= through:
                manager._scope_exited(through)


@contextmanager
def _synced_scope(step: int, reduce: ReduceSpec) -> Iterator[int]:
    from stepsync.distributed import synced_step_scope

    with synced_step_scope(step, reduce=reduce) as synced:
        yield synced.step


def propagate(fn: Callable[P, R]) -> Callable[P, R]:
    """Return ``fn`` bound to the caller's active step and producer, for threads and executors.

    Threads do not inherit contextvars; a job submitted with ``propagate(fn)`` logs to the step
    that was active where ``propagate`` was called, even after the caller moved on.
    """
    step = ACTIVE_STEP.get()
    producer = ACTIVE_PRODUCER.get()

    @functools.wraps(fn)
    def run_in_caller_context(*args: P.args, **kwargs: P.kwargs) -> R:
        step_token = ACTIVE_STEP.set(step)
        producer_token = ACTIVE_PRODUCER.set(producer)
        try:
            return fn(*args, **kwargs)
        finally:
            ACTIVE_PRODUCER.reset(producer_token)
            ACTIVE_STEP.reset(step_token)

    return run_in_caller_context


def _after_fork_in_child() -> None:
    open_scopes.clear()  # the scopes of the parent's other threads do not exist here


os.register_at_fork(after_in_child=_after_fork_in_child)
