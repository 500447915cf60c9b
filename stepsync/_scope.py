"""``step_scope``'s context manager, and ``propagate`` for threads and executors.

The active step is a contextvar: it follows asyncio tasks, and ``propagate`` carries it into
threads. Entering the outermost scope of a step makes it every live manager's current step;
leaving it commits the step (``_live``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from stepsync import _live
from stepsync._context import ACTIVE_PRODUCER, ACTIVE_STEP

P = ParamSpec("P")
R = TypeVar("R")


class StepScope:
    """``with StepScope(step):`` logs everything inside to ``step``; leaving commits it.

    Only the outermost scope of a step commits (nested scopes of the same step merge), and it
    commits when the block raises too, so what was logged before the error is kept.
    """

    __slots__ = ("_outermost", "_step", "_token")

    def __init__(self, step: int) -> None:
        self._step = step

    def __enter__(self) -> int:
        step = self._step
        self._outermost = ACTIVE_STEP.get() != step
        self._token = ACTIVE_STEP.set(step)
        if self._outermost:
            _live.scope_opened(self, step)
        return step

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        ACTIVE_STEP.reset(self._token)
        if self._outermost:
            _live.scope_closed(self, self._step)


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
