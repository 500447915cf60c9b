"""The transparent patch: wandb's ``Run.log`` (and direct ``Run._log`` calls) go through stepsync.

The wrappers sit on the class, so ``wandb.log``, ``run.log`` and every integration see them. The
routing wrapper stands in front of ``Run.log``'s own decorators (they cost more than stepsync's
whole path); the manager commits through the unpatched ``Run._log`` (a forked child through
``Run.log``, with a guard up), so a commit never re-enters the patch, and the ``_log`` wrapper
only routes calls that did not come through ``log``.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import wrapt

from stepsync import _registry, _wandb
from stepsync._context import ACTIVE_PRODUCER

logger = logging.getLogger("stepsync")

_lock = threading.Lock()
_patched = False
#: What stood on ``Run`` before ``patch()``, restored as is by ``unpatch()``.
_saved: dict[str, Any] = {}
_warned_fallback = False

_DEFAULT_PRODUCER = ("wandb.log", 5)
# Bound once: the routing wrapper reads them on every call.
_GUARD = _wandb.GUARD
_ATTR = _registry.ATTR


def _log_args(
    data: Any, step: Any = None, commit: bool | None = None
) -> tuple[Any, Any, bool | None]:
    return data, step, commit


def _define_metric_args(name: Any, step_metric: Any = None, *_: Any, **__: Any) -> tuple[Any, Any]:
    return name, step_metric


def _route_private(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Route a direct ``Run._log`` call; wandb's own ``log`` (guard up) goes straight through."""
    if _GUARD.active:
        return wrapped(*args, **kwargs)
    return _route(wrapped, instance, args, kwargs)


def _route(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Send one ``log`` call to the manager of the run it was made on.

    No guard check here: stepsync commits through ``Run._log`` itself, never through ``log``.
    """
    global _warned_fallback
    if not _patched or instance is None:
        return _wandb.call_native(wrapped, *args, **kwargs)
    if not kwargs and len(args) == 1:  # run.log(data), the usual call
        data, step, commit = args[0], None, None
    else:
        try:
            data, step, commit = _log_args(*args, **kwargs)
        except TypeError:  # a call wandb itself would reject: let wandb say so
            return _wandb.call_native(wrapped, *args, **kwargs)
    manager = instance.__dict__.get(_ATTR)
    if manager is None:
        try:
            manager = _registry.get_manager(instance)
        except Exception:
            if not _warned_fallback:
                _warned_fallback = True
                logger.exception("stepsync: cannot manage this run; logging natively")
            return _wandb.call_native(wrapped, *args, **kwargs)
    manager._log(data, step, commit, ACTIVE_PRODUCER.get() or _DEFAULT_PRODUCER)
    return None


def _record_define_metric(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Remember the user's own axes, so stepsync never overrides them."""
    result = wrapped(*args, **kwargs)
    if _patched and not _wandb.GUARD.active and instance is not None:
        try:
            name, step_metric = _define_metric_args(*args, **kwargs)
            if isinstance(name, str):
                _registry.get_manager(instance)._note_user_metric(name, step_metric)
        except Exception:
            logger.debug("stepsync: could not record define_metric", exc_info=True)
    return result


_WRAPPERS: dict[str, Callable[..., Any]] = {
    "log": _route,
    "_log": _route_private,
    "define_metric": _record_define_metric,
}


def patch() -> None:
    """Route wandb's ``Run.log`` through stepsync (idempotent; undo with ``unpatch()``)."""
    global _patched
    with _lock:
        if _patched:
            return
        run_class = _wandb.Run
        for name, wrapper in _WRAPPERS.items():
            original = run_class.__dict__.get(name)
            if original is None:  # a future wandb without `_log`: route `log` alone
                continue
            _saved[name] = original
            _wandb.ORIGINALS[name] = original
            setattr(run_class, name, wrapt.FunctionWrapper(original, wrapper))
        _patched = True
        _repoint_module_functions()
    _register_integrations()


def unpatch() -> None:
    """Flush pending data, then restore wandb's own functions exactly."""
    global _patched
    with _lock:
        if not _patched:
            return
        _registry.flush_all()
        for name, original in _saved.items():
            setattr(_wandb.Run, name, original)
        _saved.clear()
        _patched = False
        _repoint_module_functions()
    _unregister_integrations()


def is_patched() -> bool:
    """True while ``patch()`` is in effect."""
    return _patched


def _repoint_module_functions() -> None:
    """``wandb.init`` bound ``wandb.log`` to the live run: bind it again to what the class has."""
    import wandb

    run = wandb.run
    if run is None:
        return
    for name in ("log", "define_metric"):
        current = getattr(wandb, name, None)
        if getattr(current, "__self__", None) is run:
            setattr(wandb, name, getattr(run, name))


def _register_integrations() -> None:
    """Make the frameworks' own step (Trainer, Lightning) the current step, on their import."""
    from stepsync import integrations

    try:
        integrations.register_hooks()
    except Exception:
        logger.exception("stepsync: could not register framework integrations")


def _unregister_integrations() -> None:
    """Put the frameworks' own functions back, as ``unpatch()`` does for wandb's."""
    integrations = sys.modules.get("stepsync.integrations")
    if integrations is None:
        return
    try:
        integrations.unregister_hooks()
    except Exception:
        logger.exception("stepsync: could not remove framework integrations")
