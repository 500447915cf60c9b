"""``@logs_metrics``: attribute what a function logs (and returns) to a source and priority."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import wrapt

from stepsync._config import DEFAULT_PRIORITY
from stepsync._context import ACTIVE_PRODUCER, ACTIVE_SYNCED
from stepsync._errors import NoActiveRunError
from stepsync._validate import check_priority
from stepsync._warn import warn_no_run

F = TypeVar("F", bound=Callable[..., Any])


def logs_metrics(source: str, priority: int = DEFAULT_PRIORITY) -> Callable[[F], F]:
    """Decorate a function (sync or async) whose logs belong to ``source`` at ``priority``.

    Inside the call, every log routed through stepsync is attributed to ``source``; a returned
    mapping is logged to the active step. The return value is passed back untouched.
    """
    if not isinstance(source, str) or not source:
        raise TypeError(f"stepsync: source must be a non-empty str, not {source!r}")
    producer = (source, check_priority(priority))

    def decorate(fn: F) -> F:
        # Plain functions and methods are sync or async for good; other callables
        # (classmethod objects, instances) are asked at each call.
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
    if not isinstance(result, Mapping):
        return
    from stepsync._manager import get_manager  # imports wandb: on first use only

    try:
        manager = get_manager()
    except NoActiveRunError:
        # A rank without a run inside a synced scope still contributes to the step's row.
        synced = ACTIVE_SYNCED.get()
        if synced is not None:
            synced.log(result, source=producer[0], priority=producer[1])
        else:
            warn_no_run(f"the metrics @logs_metrics({producer[0]!r}) returns are")
        return
    manager.route(result, None, None, producer)
