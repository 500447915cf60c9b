"""The active logical step and producer, held in contextvars.

``step_scope`` marks the step a block of code belongs to; leaving the outermost scope of a step
commits it. Contextvars follow asyncio tasks; ``propagate`` carries them into threads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

from stepsync._context import ACTIVE_PRODUCER, ACTIVE_STEP
from stepsync._registry import scope_entered, scope_exited
from stepsync._validate import check_step

if TYPE_CHECKING:
    from stepsync.distributed import ReduceSpec

P = ParamSpec("P")
R = TypeVar("R")


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
    """The context manager of ``step_scope``: a small class, as it runs once per training step."""

    __slots__ = ("_outermost", "_step", "_token")

    def __init__(self, step: int) -> None:
        self._step = step

    def __enter__(self) -> int:
        step = self._step
        self._outermost = ACTIVE_STEP.get() != step
        self._token = ACTIVE_STEP.set(step)
        if self._outermost:
            scope_entered(self, step)
        return step

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        ACTIVE_STEP.reset(self._token)
        if self._outermost:
            scope_exited(self, self._step)


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
