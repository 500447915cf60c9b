"""wandb's own functions, captured before any patch, and the guard that keeps commits native.

The manager commits through these originals, so a commit never re-enters stepsync's patch; the
thread-local guard tells the patched ``Run._log`` that a call comes from wandb's own ``log``.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import wandb
from wandb.sdk import wandb_run

from stepsync._errors import NoActiveRunError

Run = wandb_run.Run


def _version(text: str) -> tuple[int, int, int]:
    """``"0.15.12"`` -> ``(0, 15, 12)``; a pre-release or local suffix is ignored."""
    parts = [int(number) for number in re.findall(r"\d+", text)[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


#: The installed wandb, as a tuple.
VERSION = _version(wandb.__version__)

#: The oldest wandb stepsync patches. Measured on 0.12.21, 0.13.11 and 0.14.2 (Python 3.11):
#: ``Run._is_finished`` is missing (logging after ``finish()`` is not refused) and they do not
#: install on Python >= 3.12, so ``patch()`` leaves them alone with one warning.
MIN_VERSION = (0, 15, 0)
SUPPORTED = VERSION >= MIN_VERSION

#: wandb >= 0.19.10: ``wandb.init(reinit="create_new")``, several live runs in one process.
#: Before it a process holds one live run (``reinit=True`` finishes the previous one), and
#: stepsync follows that: one manager per run, one run at a time.
SEVERAL_LIVE_RUNS = VERSION >= (0, 19, 10)

#: wandb >= 0.18.0 (wandb-core) merges nested dicts logged to one step key by key
#: (``{"n": {"x": 1}}`` then ``{"n": {"y": 2}}`` make ``{"n": {"x": 1, "y": 2}}``). wandb 0.15.0
#: to 0.17.9 (the Python backend: ``HandleManager.handle_request_partial_history`` does a plain
#: ``dict.update``) keep only the later dict: ``{"n": {"y": 2}}``. stepsync's merge follows.
MERGES_NESTED_DICTS = VERSION >= (0, 18, 0)

#: wandb 0.15.0 to 0.17.9 (the Python backend: ``HandleManager._update_summary_leaf``) stop
#: writing nested keys (``{"train": {"loss": 1}}``) into the summary once any metric is defined,
#: unless a ``summary=`` option covers them; wandb-core keeps writing them. stepsync's own
#: declarations must not cause that, so its summary keeper writes those keys back itself.
DEFINITIONS_HIDE_NESTED_SUMMARIES = VERSION < (0, 18, 0)

#: wandb 0.15.0 to 0.17.9, once any metric is defined, write a key's summary only when its value
#: differs from the key's previous row (``HandleManager._update_summary_leaf``): after a summary
#: write of stepsync's, a row that repeats the previous row's value leaves the summary as written.
SUMMARY_SKIPS_REPEATED_VALUES = VERSION < (0, 18, 0)

#: wandb's record of its own monkeypatches (``{"tensorboard": [...], ...}``); never rebound.
PATCHES: dict[str, Any] = getattr(wandb, "patched", None) or {}

#: The attributes of ``Run`` that stepsync may patch, as wandb defines them.
ORIGINALS: dict[str, Any] = {
    name: Run.__dict__[name]
    for name in ("log", "_log", "define_metric", "step")
    if name in Run.__dict__
}


class _Guard(threading.local):
    active = False


GUARD = _Guard()


def active_run() -> Any:
    """``wandb.run``, or ``NoActiveRunError`` when there is none."""
    if wandb.run is None:
        raise NoActiveRunError(
            "stepsync: no active wandb run; call wandb.init() first or pass run="
        )
    return wandb.run


def call_native(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a wandb original with the guard up, so patched wrappers pass the call straight on."""
    if GUARD.active:
        return fn(*args, **kwargs)
    GUARD.active = True
    try:
        return fn(*args, **kwargs)
    finally:
        GUARD.active = False


def native_log(run: Any, data: Mapping[str, Any], step: int, shared: bool = False) -> int:
    """Commit one row through wandb's own ``Run._log``; return its native step.

    That step is ``step``, or wandb's next step when something else moved wandb further.
    ``Run.log``'s decorators cost more than all of stepsync's work, and stepsync already checked
    the arguments and the finished state: so only a forked child, which needs ``@_attach`` to
    reach the parent's run, goes through ``Run.log`` (with the guard up: its ``self._log`` call
    must not be routed). When the row is wandb's next step anyway, no step is passed: wandb
    numbers it the same, skips its checks of an explicit step, and no row can be refused as
    "less than the current step". wandb ignores ``step`` in shared mode, so none is passed there
    (``shared``).
    """
    wandb_next = getattr(run, "_local_step", None)
    if wandb_next is None:  # wandb < 0.27.2
        wandb_next = next_native_step(run)
    if wandb_next >= step:
        step, passed = wandb_next, None
    else:
        passed = None if shared else step
    fn = ORIGINALS.get("_log") if getattr(run, "_attach_pid", None) == os.getpid() else None
    if fn is not None:
        fn(run, data, step=passed, commit=True)  # unpatched: no guard needed
        return step
    # A forked child names no step: wandb-core puts its row at the run's current step, so it
    # can never move the run past steps the parent still holds (the parent's rows would drop).
    call_native(ORIGINALS["log"], run, data, step=None, commit=True)
    return step


def log_natively(run: Any, data: Any, step: Any = None, commit: Any = None) -> None:
    """A call handed to wandb's own ``Run.log`` as it came (a run whose step wandb owns)."""
    call_native(ORIGINALS["log"], run, data, step, commit)


def native_define_metric(run: Any, name: str, **options: Any) -> None:
    """Declare a metric through wandb's own ``Run.define_metric``."""
    call_native(ORIGINALS["define_metric"], run, name, **options)


def wandb_owns_step() -> bool:
    """True while wandb ignores ``log(step=...)`` and numbers every row itself.

    That is TensorBoard sync (``sync_tensorboard=True`` or ``wandb.tensorboard.patch()``, wandb
    >= 0.12 through 0.31 at least): wandb-core writes the TensorBoard rows, which never pass
    ``Run.log``, and the Python side publishes no step (``Run._partial_history_callback``). The
    flag is process-wide and stays set after ``finish()``; ``unpatch`` rebinds its list, so it
    is read through the dict every time.
    """
    return bool(PATCHES.get("tensorboard"))


def read_summary(run: Any) -> dict[str, Any]:
    """The run's live summary, as wandb-core holds it now (one round trip, no hook)."""
    return dict(call_native(run.summary._as_dict))


def before_summary_reads(run: Any, hook: Callable[[], None]) -> None:
    """Call ``hook`` before each live read of ``run.summary`` (not for stepsync's own reads).

    wandb binds the reader into the run's ``Summary`` at ``wandb.init``, so this wraps it there.
    """
    summary = run.summary
    read = summary._get_current_summary_callback

    def read_after_hook() -> Any:
        if not GUARD.active:
            hook()
        return read()

    object.__setattr__(summary, "_get_current_summary_callback", read_after_hook)


def write_summary(run: Any, values: Mapping[tuple[str, ...], Any]) -> None:
    """Set summary values by path (``("train", "loss")``), as ``run.summary[...] = v`` does.

    A nested path writes that one leaf (wandb sends it as a nested key), not its whole parent.
    The guard keeps the reads this makes from counting as user reads.
    """
    call_native(_write_summary, run, values)


def _write_summary(run: Any, values: Mapping[tuple[str, ...], Any]) -> None:
    for path, value in values.items():
        node = run.summary
        for depth, part in enumerate(path[:-1]):
            try:
                node = node[part]
            except KeyError:  # no such parent (wandb < 0.18 may leave nested keys out): made
                node[part] = _nested(path[depth + 1 :], value)
                break
        else:
            node[path[-1]] = value


def _nested(keys: tuple[str, ...], value: Any) -> Any:
    """``("a", "b"), v`` -> ``{"a": {"b": v}}``."""
    for key in reversed(keys):
        value = {key: value}
    return value


def unserializable_keys(run: Any, row: Mapping[str, Any], step: int) -> list[str]:
    """The keys of ``row`` whose value wandb's own conversion refuses (for the error message)."""
    from wandb.sdk.data_types.utils import history_dict_to_json
    from wandb.util import json_dumps_safer_history

    bad = []
    for key, value in row.items():
        try:
            converted = history_dict_to_json(run, {key: value}, step=step, ignore_copy_err=True)
            json_dumps_safer_history(converted)
        except Exception:
            bad.append(key)
    return bad


def next_native_step(run: Any) -> int:
    """The step of the run's next row, as wandb's Python side knows it (no round trip)."""
    step = getattr(run, "_local_step", None)
    if step is None:  # wandb < 0.27.2 kept it as `_step`
        step = getattr(run, "_step", 0)
    return step if type(step) is int else 0


def starting_step(run: Any) -> int:
    """The step of the run's next row, asked of wandb-core (after a resume it is not 0)."""
    try:
        return int(run.step)
    except Exception:  # disabled/shared runs, or a wandb without the property
        return next_native_step(run)


def is_disabled(run: Any) -> bool:
    """True for the no-op run of ``wandb.init(mode="disabled")`` (a ``Run`` that keeps nothing)."""
    if not isinstance(run, Run):
        return True
    try:
        return bool(run.settings._noop)
    except Exception:  # wandb < 0.27.1: a plain Run with `disabled` set
        return bool(getattr(run, "disabled", False))


def is_shared(run: Any) -> bool:
    """True for a run in ``mode="shared"``, where wandb ignores ``step``."""
    try:
        return bool(run.settings._shared)
    except Exception:
        return False


def is_finished(run: Any) -> bool:
    """True once ``run.finish()`` has begun (wandb then refuses ``log``; wandb >= 0.15.0)."""
    return bool(getattr(run, "_is_finished", False))


def check_supported() -> bool:
    """True when this wandb can be patched; else warn once (naming the minimum) and say False."""
    global _warned_unsupported
    if SUPPORTED:
        return True
    if not _warned_unsupported and not os.environ.get(_WARNED_VARIABLE):
        _warned_unsupported = True
        # Child processes (wandb's own service process, started with the activation variable
        # inherited, and a job's workers) say it no second time.
        os.environ[_WARNED_VARIABLE] = "1"
        warnings.warn(
            f"stepsync needs wandb >= {'.'.join(map(str, MIN_VERSION))} (found "
            f"{wandb.__version__}); wandb is left unpatched and logs as it always did",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


_warned_unsupported = False
_WARNED_VARIABLE = "_STEPSYNC_WARNED_OLD_WANDB"


def no_stats_settings() -> dict[str, Any]:
    """``wandb.Settings`` keywords that turn system metrics off (the demo's runs).

    ``x_disable_stats`` from wandb 0.19.0 (its pydantic settings); wandb 0.15.0 to 0.18.x
    reject that name and call it ``_disable_stats``.
    """
    if VERSION >= (0, 19, 0):
        return {"x_disable_stats": True}
    return {"_disable_stats": True}


def add_finish_hook(run: Any, hook: Callable[[], None]) -> bool:
    """Run ``hook`` at the start of ``run.finish()``, while the run still accepts ``log``."""
    try:
        hooks = run._teardown_hooks
        hooks.append(wandb_run.TeardownHook(hook, wandb_run.TeardownStage.EARLY))
    except Exception:
        return False
    return True


def finished_error(run: Any) -> Exception:
    """The error wandb raises for ``log`` after ``finish()``, worded for stepsync."""
    from wandb.errors import UsageError

    return UsageError(
        f"Run ({getattr(run, 'id', '?')}) is finished: stepsync cannot log to it. "
        "Log before run.finish(), or start a new run."
    )
