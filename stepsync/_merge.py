"""One step's entries become one row: the lowest priority number wins, then the later write."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

#: One log call waiting for its row: its priority and its data as captured at the call.
Entry = tuple[int, dict[str, Any]]

_by_priority = itemgetter(0)


def merge(entries: Sequence[Entry], deep: bool = True) -> tuple[dict[str, Any], int]:
    """Merge one step's entries into one row; return it and the number of key collisions.

    ``deep``: nested dicts are merged key by key, as wandb >= 0.18 merges them within a step
    (older wandb lets the later dict replace the earlier one whole).
    """
    if len(entries) == 1:
        return entries[0][1], 0  # captured at the call: already the row's own copy
    merged: dict[str, Any] = {}
    written = 0
    for _, data in entries:
        merged.update(data)
        written += len(data)
    if written == len(merged):
        return merged, 0  # no key written twice: the order does not matter
    merged = {}
    collisions = 0
    # A stable sort, highest number first: more important sources write last and win; within
    # one priority the arrival order is kept, so the later write wins.
    for _, data in sorted(entries, key=_by_priority, reverse=True):
        collisions += _merge_into(merged, data, deep)
    return merged, collisions


def _merge_into(target: dict[str, Any], data: Mapping[str, Any], deep: bool) -> int:
    """Write ``data`` over ``target`` (``deep``: nested dicts key by key); return the keys
    overwritten."""
    collisions = 0
    for key, value in data.items():
        if key in target:
            old = target[key]
            if deep and isinstance(old, dict) and isinstance(value, dict):
                nested = dict(old)  # the captured dict stays as it was
                collisions += _merge_into(nested, value, deep)
                target[key] = nested
                continue
            collisions += 1
        target[key] = value
    return collisions


def collides(row: Sequence[Entry], entry: Entry) -> bool:
    """True when ``entry`` writes a key that an entry of ``row`` already holds."""
    data = entry[1]
    return any(not held.keys().isdisjoint(data) for _, held in row)
