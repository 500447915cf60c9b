"""``step_scope``: a plain scope, or one synced across torch.distributed ranks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Literal

from stepsync._scope import StepScope
from stepsync._validate import check_step

if TYPE_CHECKING:
    from stepsync._reduce import ReduceSpec


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
    return StepScope(step)


@contextmanager
def _synced_scope(step: int, reduce: ReduceSpec) -> Iterator[int]:
    from stepsync.distributed import synced_step_scope

    with synced_step_scope(step, reduce=reduce) as synced:
        yield synced.step
