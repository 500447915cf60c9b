"""stepsync: wandb logging that loses nothing when many parts of a training job log at once."""

from stepsync._config import configure
from stepsync._errors import LateStepError, NoActiveRunError
from stepsync._manager import StepManager
from stepsync._patch import is_patched, patch, unpatch
from stepsync._producers import logs_metrics
from stepsync._registry import get_manager
from stepsync._scope import propagate, step_scope

__version__ = "0.1.0"

__all__ = [
    "LateStepError",
    "NoActiveRunError",
    "StepManager",
    "configure",
    "get_manager",
    "is_patched",
    "logs_metrics",
    "patch",
    "propagate",
    "step_scope",
    "unpatch",
]
