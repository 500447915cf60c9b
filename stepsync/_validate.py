"""Call-site argument checks, shaped like wandb's own errors."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any


def check_data(data: object) -> Mapping[str, Any]:
    """Return ``data`` if it is a mapping with string keys, else raise ``TypeError``."""
    if type(data) is not dict and not isinstance(data, Mapping):  # ABC check only if needed
        raise TypeError(f"stepsync: log data must be a mapping, not {type(data).__name__}")
    try:
        "".join(data)  # every key a str: checked at C speed, as one call
    except TypeError:
        bad = next(key for key in data if not isinstance(key, str))
        raise TypeError(f"stepsync: log keys must be strings, got {bad!r}") from None
    return data


def check_step(step: object, name: str = "step") -> int:
    """Return ``step`` as an ``int``; integers and integer scalars (numpy, torch) only."""
    if type(step) is int:
        value = step
    elif (
        isinstance(step, (bool, float))
        or not hasattr(step, "__index__")
        or str(getattr(step, "dtype", "")) in ("bool", "torch.bool")  # torch.tensor(True)
    ):
        raise TypeError(f"stepsync: {name} must be an integer, not {type(step).__name__}")
    else:
        value = operator.index(step)
    if value < 0:
        raise ValueError(f"stepsync: {name} must be >= 0, got {value}")
    return value


def check_priority(priority: object) -> int:
    """Return ``priority`` as an ``int`` >= 0 (0 is the highest priority)."""
    return check_step(priority, "priority")
