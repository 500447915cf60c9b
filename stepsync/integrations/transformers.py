"""Hugging Face Trainer (and TRL, which subclasses it): the global step is the current step.

Every Trainer event is dispatched by ``CallbackHandler.call_event``; before any callback sees an
event, the step it belongs to becomes the current stepsync step. So the Trainer's own step-less
rows (``WandbCallback``), its eval rows, TRL's tables and every callback logging
``step=state.global_step`` land in the same logical step. Importing this module imports
transformers; ``stepsync`` itself imports it only from the post-import hook.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import wrapt
from transformers.trainer_callback import TrainerCallback

from stepsync.integrations._common import Installed, active_run, follow, warn_once

__all__ = ["StepSyncCallback", "install", "step_for_event"]

SOURCE = "transformers"

# Events fired while step `global_step + 1` is being computed: the optimizer has not stepped yet,
# so whatever is logged then (losses in `training_step`, TRL generations, `wandb.watch`
# gradients) belongs with the row the Trainer will write once `global_step` has advanced.
_STEP_IN_PROGRESS = frozenset(
    {"on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step"}
)


def step_for_event(event: str, global_step: int) -> int:
    """The logical step a Trainer event belongs to: the step in progress, or the last one done."""
    return global_step + 1 if event in _STEP_IN_PROGRESS else global_step


def _follow_state(event: str, state: Any) -> None:
    """Point the run's manager at the step of ``event``; a no-op unless stepsync is patched."""
    try:
        run = active_run()
        if run is None:
            return
        step = state.global_step
    except Exception as exc:
        warn_once(f"{SOURCE}:{event}", exc)
        return
    follow(run, step_for_event(event, int(step)), SOURCE)


def _call_event(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``CallbackHandler.call_event(event, args, state, control, **kw)``."""
    event = args[0] if args else kwargs.get("event")
    state = args[2] if len(args) > 2 else kwargs.get("state")
    if isinstance(event, str) and state is not None:
        _follow_state(event, state)
    return wrapped(*args, **kwargs)


def install(module: ModuleType) -> Installed:
    """Wrap ``transformers.trainer_callback.CallbackHandler.call_event`` (post-import hook)."""
    handler = module.CallbackHandler
    handle = wrapt.wrap_function_wrapper(handler, "call_event", _call_event)
    return [(handler, "call_event", handle)]


class StepSyncCallback(TrainerCallback):  # type: ignore[misc,unused-ignore]  # Any without transformers
    """Explicit form: ``Trainer(..., callbacks=[StepSyncCallback()])`` patches wandb and follows
    the Trainer's step, for code that does not use ``STEPSYNC_ENABLED`` or ``stepsync.patch()``."""

    def __init__(self) -> None:
        from stepsync._patch import patch

        # Before the Trainer's WandbCallback calls wandb.init, so `wandb.log` binds the patch.
        patch()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Training (or a resume) starts at ``state.global_step``."""
        _follow_state("on_train_begin", state)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Values logged while a step is computed belong to the step being computed."""
        _follow_state("on_step_begin", state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """After the optimizer step, ``global_step`` names the row the Trainer writes."""
        _follow_state("on_step_end", state)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Eval values belong to the step that triggered evaluation."""
        _follow_state("on_evaluate", state)

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The Trainer's log rows carry ``train/global_step``; make it the current step."""
        _follow_state("on_log", state)
