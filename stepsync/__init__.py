"""stepsync: wandb logging that loses nothing when many parts of a training job log at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stepsync._api import step_scope
from stepsync._config import configure
from stepsync._errors import LateStepError, NoActiveRunError
from stepsync._producers import logs_metrics
from stepsync._scope import propagate

if TYPE_CHECKING:
    from stepsync._manager import StepManager, get_manager
    from stepsync._patch import is_patched, patch, unpatch

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

# These need wandb (about a second to import): load them on first use, so `import stepsync`
# and the CLI's `run`/`scan` stay fast.
_LAZY = {
    "StepManager": "stepsync._manager",
    "get_manager": "stepsync._manager",
    "is_patched": "stepsync._patch",
    "patch": "stepsync._patch",
    "unpatch": "stepsync._patch",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'stepsync' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
