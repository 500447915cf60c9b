"""PyTorch Lightning: the step ``WandbLogger.log_metrics`` is given becomes the current step.

``WandbLogger`` logs its metrics without ``step`` (it writes ``trainer/global_step`` instead), so
natively a user's ``self.logger.experiment.log({...}, step=self.global_step)`` falls behind
wandb's step counter and is dropped. Following the logger's step puts both in one row. Works for
``lightning.pytorch`` and ``pytorch_lightning`` alike; imports neither.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import wrapt

from stepsync.integrations._common import Installed, enabled, follow, warn_once

__all__ = ["install"]

SOURCE = "lightning"


def _log_metrics(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``WandbLogger.log_metrics(metrics, step=None)``."""
    step = kwargs.get("step", args[1] if len(args) > 1 else None)
    if step is not None and enabled():
        run = None
        try:
            from stepsync._wandb import Run  # wandb is imported: the logger uses it

            # The logger's own run (created lazily by `experiment`); a rank other than zero gets
            # a stand-in object, which is not a Run and is left alone.
            experiment = instance.experiment
            if isinstance(experiment, Run):
                run = experiment
            step = int(step)
        except Exception as exc:
            warn_once(f"{SOURCE}:log_metrics", exc)
        if run is not None:
            follow(run, step, SOURCE)
    return wrapped(*args, **kwargs)


def install(module: ModuleType) -> Installed:
    """Wrap ``<module>.WandbLogger.log_metrics`` (post-import hook of the logger module)."""
    logger_class = module.WandbLogger
    handle = wrapt.wrap_function_wrapper(logger_class, "log_metrics", _log_metrics)
    return [(logger_class, "log_metrics", handle)]
