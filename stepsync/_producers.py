"""``@logs_metrics``: attribute what a function logs (and returns) to a source and priority."""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import wrapt

from stepsync._context import ACTIVE_PRODUCER
from stepsync._errors import NoActiveRunError
from stepsync._validate import check_priority

logger = logging.getLogger("stepsync")

F = TypeVar("F", bound=Callable[..., Any])

_warned_no_run = False


def logs_metrics(source: str, priority: int = 5) -> Callable[[F], F]:
    """Decorate a function (sync or async) whose logs belong to ``source`` at ``priority``.

    Inside the call, every log routed through stepsync is attributed to ``source``; a returned
    mapping is logged to the active step. The return value is passed back untouched.
    """
    if not isinstance(source, str) or not source:
        raise TypeError(f"stepsync: source must be a non-empty str, not {source!r}")
    producer = (source, check_priority(priority))

    def decorate(fn: F) -> F:
        # Sync or async is decided once for plain functions and methods (asking costs ~0.4 us a
        # call); other callables (classmethod objects, instances) are asked on each call.
        known = inspect.isfunction(fn) or inspect.ismethod(fn)
        is_async = inspect.iscoroutinefunction(fn) if known else None

        @wrapt.decorator
        def wrapper(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            if is_async or (is_async is None and inspect.iscoroutinefunction(wrapped)):
                return _run_async(wrapped, args, kwargs, producer)
            token = ACTIVE_PRODUCER.set(producer)
            try:
                result = wrapped(*args, **kwargs)
                if result is not None:
                    _log_result(result, producer)
            finally:
                ACTIVE_PRODUCER.reset(token)
            return result

        return cast("F", wrapper(fn))

    return decorate


async def _run_async(
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    producer: tuple[str, int],
) -> Any:
    token = ACTIVE_PRODUCER.set(producer)
    try:
        result = await wrapped(*args, **kwargs)
        _log_result(result, producer)
    finally:
        ACTIVE_PRODUCER.reset(token)
    return result


def _log_result(result: Any, producer: tuple[str, int]) -> None:
    """Log a returned mapping to the active step of the current run, if there is one."""
    global _warned_no_run
    if not isinstance(result, Mapping):
        return
    from stepsync._registry import get_manager

    try:
        manager = get_manager()
    except NoActiveRunError:
        # A rank without a run inside a synced scope still contributes to the step's row.
        distributed = sys.modules.get("stepsync.distributed")
        synced = distributed.current_synced_step() if distributed is not None else None
        if synced is not None:
            synced.log(result, source=producer[0], priority=producer[1])
            return
        if not _warned_no_run:
            _warned_no_run = True
            logger.warning(
                "stepsync: @logs_metrics(%r) returned metrics but there is no wandb run; "
                "they are not logged (shown once)",
                producer[0],
            )
        return
    manager._log(result, None, None, producer)
