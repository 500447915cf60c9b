"""The active logical step and producer, held in contextvars.

``step_scope`` marks the step a block of code belongs to; leaving the outermost scope of a step
commits it. Contextvars follow asyncio tasks; ``propagate`` carries them into threads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

from stepsync import _registry
from stepsync._context import ACTIVE_PRODUCER, ACTIVE_STEP
from stepsync._validate import check_step

if TYPE_CHECKING:
    from stepsync.distributed import ReduceSpec

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def step_scope(
    step: int, *, sync: Literal["ranks"] | None = None, reduce: ReduceSpec = None
) -> Iterator[int]:
    """Log everything in this block to logical ``step``; leaving it commits the step.

    Only the outermost scope of a step commits (nested scopes of the same step merge), and the
    commit also happens when the block raises, so what was logged before the error is kept.
    ``sync="ranks"`` combines the step's values across torch.distributed ranks first (``reduce``:
    see ``stepsync.distributed.synced_step_scope``).
    """
    if sync is not None:
        if sync != "ranks":
            raise ValueError(f"stepsync: sync must be None or 'ranks', got {sync!r}")
        from stepsync.distributed import synced_step_scope

        with synced_step_scope(step, reduce=reduce) as synced:
            yield synced.step
        return
    if reduce is not None:
        raise ValueError("stepsync: reduce= needs sync='ranks'")
    step = check_step(step)
    outermost = ACTIVE_STEP.get() != step
    token = ACTIVE_STEP.set(step)
    if outermost:
        _registry.scope_entered(step)
    try:
        yield step
    finally:
        ACTIVE_STEP.reset(token)
        if outermost:
            _registry.scope_exited(step)


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
