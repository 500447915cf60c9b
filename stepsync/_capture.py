"""Capture a logged value at the call: what lands is what ``log`` received, whatever happens next.

wandb serializes every value in the caller's thread, inside ``log``; stepsync commits later, so it
takes the same snapshot at the call: scalars, strings and wandb's own objects (media, tables,
charts: snapshots already) pass as they are, mappings are copied key by key, numpy arrays of
numbers are copied, and anything else goes through wandb's own JSON conversion
(``json_dumps_safer_history``: tensors detached and moved to the CPU, sets, dates ...). A value
that conversion refuses raises wandb's own ``TypeError`` here, at the call, as it would natively.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from wandb.util import json_dumps_safer_history

#: Immutable values that wandb stores as they are.
_PLAIN = frozenset({int, float, str, bool, type(None)})


def capture(data: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """A private copy of ``data`` that later changes to the caller's objects cannot reach, and
    whether it holds nested dicts (a row with them is walked leaf by leaf at commit)."""
    copy = dict(data)
    if _PLAIN.issuperset(map(type, copy.values())):
        return copy, False
    nested = False
    for key, value in copy.items():
        if type(value) not in _PLAIN:
            copy[key] = captured = _capture_value(value)
            nested = nested or type(captured) is dict
    return copy, nested


def _capture_value(value: Any) -> Any:  # noqa: PLR0911  (one return per kind of value)
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict or isinstance(value, Mapping):
        return {key: _capture_value(item) for key, item in value.items()}
    if is_wandb_object(value):
        return value  # media, tables, charts: wandb's own snapshots
    module = kind.__module__
    if module == "numpy":
        numpy = sys.modules["numpy"]
        if isinstance(value, numpy.generic):
            return value  # a numpy scalar is immutable
        if isinstance(value, numpy.ndarray) and not value.dtype.hasobject:
            return value.copy()  # wandb converts the copy at commit as it would the original
    elif isinstance(value, (list, tuple)) and value and all(map(is_wandb_object, value)):
        return list(value)  # a list of media: wandb logs it as one media sequence
    elif _converted_by_wandb_later(value):
        return _to_wandb_media(value)
    # The conversion wandb applies when it writes the row, done now: plain JSON, which nobody
    # else holds, and which gives the same text when wandb encodes it again.
    return json.loads(json_dumps_safer_history(value))


def is_wandb_object(value: Any) -> bool:
    """wandb's own objects (media, tables, charts): snapshots when made, bound to a run later."""
    return type(value).__module__.startswith("wandb.")


def _converted_by_wandb_later(value: Any) -> bool:
    """A pandas DataFrame, a matplotlib or plotly figure: wandb turns it into media at the call."""
    from wandb import util

    typename = util.get_full_typename(value)
    return (
        util.is_pandas_data_frame(value)
        or util.is_matplotlib_typename(typename)
        or util.is_plotly_typename(typename)
    )


def _to_wandb_media(value: Any) -> Any:
    import wandb
    from wandb.sdk.data_types.plotly import Plotly

    if wandb.util.is_pandas_data_frame(value):
        return wandb.Table(dataframe=value)
    return Plotly.make_plot_media(value)
