"""Manager options: the one place for their defaults, checks and names.

Implicit managers (``get_manager``, the patch) take ``configure()``, then ``STEPSYNC_*``, then
the defaults below; an explicit ``StepManager(...)`` takes its own arguments.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

logger = logging.getLogger("stepsync")

#: What happens to a value for a step whose row is already written (README, "The rules").
LatePolicy = Literal["axis", "next", "drop", "raise"]
LATE_POLICIES: tuple[str, ...] = get_args(LatePolicy)

#: The source and priority of a call made outside any ``@logs_metrics`` function.
DEFAULT_SOURCE = "default"
DEFAULT_PRIORITY = 5


@dataclass(frozen=True)
class Options:
    """The options of one manager, checked (``Options.checked``) before use."""

    buffer_size: int = 100
    flush_interval: float = 2.0
    late: LatePolicy = "axis"
    axis_key: str = "stepsync/step"

    @classmethod
    def checked(cls, **options: Any) -> Options:
        """Options from keyword arguments, each checked like a call-site argument."""
        return cls(**{name: check_option(name, value) for name, value in options.items()})


DEFAULTS = Options()

_ENV = {
    "buffer_size": "STEPSYNC_BUFFER_SIZE",
    "flush_interval": "STEPSYNC_FLUSH_INTERVAL",
    "late": "STEPSYNC_LATE",
}
_configured: dict[str, Any] = {}


def check_option(name: str, value: Any) -> Any:
    """Validate one manager option; raise ``TypeError``/``ValueError`` like a bad argument."""
    if name == "buffer_size":
        if type(value) is not int:
            raise TypeError(f"stepsync: buffer_size must be an int, not {type(value).__name__}")
        if value < 1:
            raise ValueError(f"stepsync: buffer_size must be >= 1, got {value}")
    elif name == "flush_interval":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"stepsync: flush_interval must be a number, not {type(value).__name__}"
            )
        if not value >= 0:
            raise ValueError(f"stepsync: flush_interval must be >= 0, got {value}")
        value = float(value)
    elif name == "late":
        if value not in LATE_POLICIES:
            raise ValueError(f"stepsync: late must be one of {LATE_POLICIES}, got {value!r}")
    elif name == "axis_key":
        if not isinstance(value, str) or not value or value.startswith("_"):
            raise ValueError("stepsync: axis_key must be a non-empty str not starting with '_'")
    else:
        known = sorted(asdict(DEFAULTS))
        raise TypeError(f"stepsync: unknown option {name!r}; expected one of {known}")
    return value


def configure(**defaults: Any) -> None:
    """Set defaults for managers created implicitly (``get_manager``, the patch).

    Options: ``buffer_size``, ``flush_interval``, ``late``, ``axis_key``.
    """
    checked = {name: check_option(name, value) for name, value in defaults.items()}
    _configured.update(checked)


def _from_env(name: str) -> Any:
    raw = os.environ.get(_ENV[name], "").strip()
    if not raw:
        return None
    try:
        value: Any = raw
        if name == "buffer_size":
            value = int(raw)
        elif name == "flush_interval":
            value = float(raw)
        return check_option(name, value)
    except (TypeError, ValueError):
        logger.warning("stepsync: ignoring %s=%r (invalid value)", _ENV[name], raw)
        return None


def manager_defaults() -> dict[str, Any]:
    """The options for a manager created implicitly (by ``get_manager`` or the patch)."""
    options = asdict(DEFAULTS)
    for name in _ENV:
        value = _from_env(name)
        if value is not None:
            options[name] = value
    options.update(_configured)
    return options


def reset() -> None:
    """Forget ``configure()`` defaults (for tests)."""
    _configured.clear()
