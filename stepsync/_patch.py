"""The transparent patch: wandb's ``Run.log`` (and direct ``Run._log`` calls) go through stepsync.

The wrappers sit on the class, so ``wandb.log``, ``run.log`` and every integration see them. Each
is a plain function made to look like the one it replaces (``functools.wraps``: name, docstring,
signature, ``__wrapped__``), as wandb's own decorators are; a ``wrapt.FunctionWrapper`` would cost
each call more than stepsync's own routing. The routing wrapper stands in front of ``Run.log``'s
own decorators (stepsync checks the arguments itself); the manager commits through the unpatched
``Run._log`` (a forked child through ``Run.log``, with a guard up), so a commit never re-enters
the patch, and the ``_log`` wrapper only routes calls that did not come through ``log``.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from stepsync import _live, _wandb
from stepsync._config import DEFAULT_PRIORITY
from stepsync._context import ACTIVE_PRODUCER
from stepsync._manager import get_manager
from stepsync._warn import warn_once

logger = logging.getLogger("stepsync")

_lock = threading.Lock()
_patched = False
#: What stood on ``Run`` before ``patch()``, restored as is by ``unpatch()``.
_saved: dict[str, Any] = {}

_DEFAULT_PRODUCER = ("wandb.log", DEFAULT_PRIORITY)

Function = Callable[..., Any]


def routing_log(original: Function) -> Function:
    """``Run.log`` through stepsync: each call goes to the manager of the run it was made on.

    No guard check here: stepsync commits through ``Run._log`` itself, never through ``log``.
    """

    @functools.wraps(original)
    def log(
        run: Any, data: Any, step: Any = None, commit: Any = None, *more: Any, **kw: Any
    ) -> Any:
        if more or kw or not _patched:
            # Arguments stepsync does not read (wandb decides what they mean, or rejects them),
            # or a bound method kept from before ``unpatch()``.
            return _wandb.call_native(original, run, data, step, commit, *more, **kw)
        manager = run.__dict__.get(_live.ATTR)
        if manager is None:  # the run's first call
            try:
                manager = get_manager(run)
            except Exception:
                warn_once(
                    "patch:no-manager",
                    "stepsync: cannot manage this run; logging natively",
                    exc_info=True,
                )
                return _wandb.call_native(original, run, data, step, commit)
        manager.route(data, step, commit, ACTIVE_PRODUCER.get() or _DEFAULT_PRODUCER)
        return None

    return log


def routing_private_log(original: Function, routed_log: Function) -> Function:
    """``Run._log`` called directly (``wandb.watch`` does) goes where ``log`` goes; wandb's own
    ``log`` calls it with the guard up, and those calls pass straight through."""

    @functools.wraps(original)
    def _log(run: Any, *args: Any, **kwargs: Any) -> Any:
        if _wandb.GUARD.active or not _patched:
            return original(run, *args, **kwargs)
        try:
            data, step, commit = _log_args(*args, **kwargs)
        except TypeError:  # wandb says what is wrong
            return _wandb.call_native(original, run, *args, **kwargs)
        return routed_log(run, data, step, commit)

    return _log


def recording_define_metric(original: Function) -> Function:
    """``Run.define_metric`` that tells the run's manager: stepsync never overrides the user."""

    @functools.wraps(original)
    def define_metric(run: Any, *args: Any, **kwargs: Any) -> Any:
        if not _patched or _wandb.GUARD.active:  # stepsync's own declarations, or unpatched
            return original(run, *args, **kwargs)
        manager = _live.manager_of(run)
        if manager is not None:
            # Natively the rows of closed steps are written before this definition: it must
            # not reach them (a new step metric would be put into them, step_sync).
            manager.commit_closed_steps()
        result = original(run, *args, **kwargs)  # wandb checks the arguments first
        try:
            name, options = _define_metric_args(*args, **kwargs)
            get_manager(run).user_defined_metric(name, **options)
        except Exception:
            logger.debug("stepsync: could not record define_metric", exc_info=True)
        return result

    return define_metric


def routing_step(original: property) -> property:
    """``Run.step``: the step plain wandb would report for the calls made so far.

    stepsync holds rows back, so wandb's own counter lags behind what the job logged.
    """

    @functools.wraps(original.fget)  # type: ignore[arg-type]
    def step(run: Any) -> int:
        manager = _live.manager_of(run) if _patched else None
        answer: int | None = manager.wandb_step() if manager is not None else None
        if answer is None:
            return int(original.fget(run))  # type: ignore[misc]
        return answer

    return property(step, doc=original.__doc__)


def _log_args(data: Any, step: Any = None, commit: Any = None) -> tuple[Any, Any, Any]:
    return data, step, commit


def _define_metric_args(  # noqa: PLR0917  (wandb's own signature)
    name: str,
    step_metric: Any = None,
    step_sync: bool | None = None,
    hidden: bool | None = None,
    summary: str | None = None,
    overwrite: bool | None = None,
) -> tuple[str, dict[str, Any]]:
    step_metric = getattr(step_metric, "name", step_metric)  # a wandb Metric object
    return name, {
        "step_metric": step_metric,
        "step_sync": step_sync,
        "hidden": hidden,
        "summary": summary,
        "overwrite": overwrite,
    }


def patch() -> None:
    """Route wandb's ``Run.log`` through stepsync (idempotent; undo with ``unpatch()``)."""
    global _patched
    with _lock:
        if _patched or not _wandb.check_supported():  # an old wandb: one warning, no patch
            return
        run_class = _wandb.Run
        originals = {
            name: original
            for name in ("log", "_log", "define_metric", "step")
            # a future wandb without `_log`: route `log` alone
            if (original := run_class.__dict__.get(name)) is not None
        }
        routed_log = routing_log(originals["log"])
        wrappers: dict[str, Any] = {"log": routed_log}
        if "_log" in originals:
            wrappers["_log"] = routing_private_log(originals["_log"], routed_log)
        if "define_metric" in originals:
            wrappers["define_metric"] = recording_define_metric(originals["define_metric"])
        if isinstance(originals.get("step"), property):
            wrappers["step"] = routing_step(originals["step"])
        for name, wrapper in wrappers.items():
            _saved[name] = _wandb.ORIGINALS[name] = originals[name]
            setattr(run_class, name, wrapper)
        _patched = True
        _repoint_module_functions()
    _register_integrations()


def unpatch() -> None:
    """Flush pending data, then restore wandb's own functions exactly."""
    global _patched
    with _lock:
        if not _patched:
            return
        for manager in _live.members():
            manager.flush()
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
    from stepsync.integrations._common import set_patched

    set_patched(True)

    try:
        integrations.register_hooks()
    except Exception:
        logger.exception("stepsync: could not register framework integrations")


def _unregister_integrations() -> None:
    """Put the frameworks' own functions back, as ``unpatch()`` does for wandb's."""
    integrations = sys.modules.get("stepsync.integrations")
    if integrations is None:
        return
    from stepsync.integrations._common import set_patched

    set_patched(False)
    try:
        integrations.unregister_hooks()
    except Exception:
        logger.exception("stepsync: could not remove framework integrations")
