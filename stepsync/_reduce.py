"""How the values of several ranks for one key become one value (``reduce=`` of a synced step).

Pure: no torch, no collectives. ``stepsync.distributed`` exchanges the values and calls ``combine``.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, get_args

#: How a key's values from several ranks become one value (``"rank"``: one key per rank).
Reduction = Literal["mean", "sum", "min", "max", "rank"]
ReduceSpec = Reduction | Mapping[str, Reduction] | None

_REDUCTIONS: tuple[str, ...] = get_args(Reduction)


class Payload(NamedTuple):
    """What one rank sends to every rank: its numeric values, and the keys of its other values."""

    rank: int
    numeric: dict[str, int | float]
    object_keys: tuple[str, ...]


class Rules:
    """A validated reduce spec: exact keys first, then glob patterns in order, then mean."""

    __slots__ = ("_cache", "_default", "_exact", "_patterns")

    def __init__(self, spec: ReduceSpec) -> None:
        self._default: str = "mean"
        self._exact: dict[str, str] = {}
        self._patterns: list[tuple[str, str]] = []
        self._cache: dict[str, str] = {}
        if spec is None:
            return
        if isinstance(spec, str):
            self._default = _check_reduction(spec, "reduce")
            return
        if not isinstance(spec, Mapping):
            raise TypeError(
                f"stepsync: reduce must be a str or a mapping of key patterns, "
                f"not {type(spec).__name__}"
            )
        for pattern, reduction in spec.items():
            if not isinstance(pattern, str) or not pattern:
                raise TypeError(f"stepsync: reduce keys must be non-empty str, got {pattern!r}")
            checked = _check_reduction(reduction, f"reduce[{pattern!r}]")
            if any(char in pattern for char in "*?["):
                self._patterns.append((pattern, checked))
            else:
                self._exact[pattern] = checked

    def __call__(self, key: str) -> str:
        reduction = self._cache.get(key)
        if reduction is None:
            reduction = self._exact.get(key)
            if reduction is None:
                reduction = next(
                    (r for pattern, r in self._patterns if fnmatch.fnmatchcase(key, pattern)),
                    self._default,
                )
            self._cache[key] = reduction
        return reduction


def _check_reduction(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"stepsync: {name} must be a str, not {type(value).__name__}")
    if value not in _REDUCTIONS:
        raise ValueError(f"stepsync: {name} must be one of {_REDUCTIONS}, got {value!r}")
    return value


def as_number(value: Any) -> int | float | None:
    """``value`` as a Python int/float if it is a real scalar (numpy, torch included), else None."""
    kind = type(value)
    if kind is float or kind is int:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return None
    try:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            return float(value)
        numel = getattr(value, "numel", None)  # torch tensors
        size = numel() if callable(numel) else getattr(value, "size", None)  # numpy arrays
        item = value.item() if type(size) is int and size == 1 else None
    except Exception:
        return None
    return item if type(item) is int or type(item) is float else None


def combine(
    payloads: list[Payload], objects: Mapping[int, Mapping[str, Any]], rules: Rules
) -> dict[str, Any]:
    """One row from every rank's values: reduce numbers, keep others from the lowest rank."""
    by_key: dict[str, list[tuple[int, Any, bool]]] = {}
    for payload in sorted(payloads, key=lambda p: p.rank):
        for key, number in payload.numeric.items():
            by_key.setdefault(key, []).append((payload.rank, number, True))
        rank_objects = objects.get(payload.rank, {})
        for key in payload.object_keys:
            if key in rank_objects:
                by_key.setdefault(key, []).append((payload.rank, rank_objects[key], False))
    row: dict[str, Any] = {}
    for key, values in by_key.items():
        reduction = rules(key)
        if reduction == "rank":
            for rank, value, _ in values:
                row[f"rank{rank}/{key}"] = value
        elif all(is_number for _, _, is_number in values):
            row[key] = _reduce(reduction, [value for _, value, _ in values])
        else:
            row[key] = values[0][1]  # not a number on some rank: kept from the lowest rank
    return row


def _reduce(reduction: str, values: list[int | float]) -> int | float:
    if len(values) == 1:
        return values[0] if reduction != "mean" else float(values[0])
    if reduction == "sum":
        return sum(values)
    if reduction == "mean":
        return math.fsum(values) / len(values)
    if any(isinstance(value, float) and math.isnan(value) for value in values):
        # NaN propagates, as in torch's min/max, instead of depending on the ranks' order.
        return math.nan
    return min(values) if reduction == "min" else max(values)
