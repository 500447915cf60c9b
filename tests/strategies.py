"""Hypothesis strategies shared by the test modules (and the profile they run under)."""

from __future__ import annotations

from _profiles import PROFILE
from hypothesis import strategies as st

__all__ = [
    "PRIORITIES",
    "PROFILE",
    "bad_data",
    "bad_steps",
    "commits",
    "entries",
    "json_numbers",
    "late_policies",
    "metric_keys",
    "metric_values",
    "negative_steps",
    "priorities",
    "sources",
    "steps",
    "summary_options",
]

#: The documented priority ladder: 0 trainer, 1 eval, 5 default, 10 debug.
PRIORITIES = (0, 1, 5, 10)

#: A few keys, so that sources often write the same key in one step (collisions).
metric_keys = st.sampled_from(("loss", "acc", "train/lr", "eval/score"))
priorities = st.sampled_from(PRIORITIES)
sources = st.sampled_from(("trainer", "eval", "callback", "debug"))
#: ``commit=`` as wandb accepts it.
commits = st.sampled_from((None, True, False))
late_policies = st.sampled_from(("axis", "next", "drop", "raise"))


def steps(max_step: int = 12) -> st.SearchStrategy[int]:
    """Small logical steps, so that generated programs revisit, reorder and skip steps."""
    return st.integers(min_value=0, max_value=max_step)


#: Values wandb stores as JSON and gives back equal (NaN/inf are compared separately).
metric_values = st.one_of(
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(max_size=20),
    st.booleans(),
)

#: One pending log call as the merge sees it: ``(priority, data)``.
entries = st.lists(
    st.tuples(priorities, st.dictionaries(metric_keys, st.integers(), min_size=1, max_size=4)),
    min_size=1,
    max_size=8,
)

#: Not a mapping of str keys: ``log()`` must raise ``TypeError`` at the call site.
bad_data = st.one_of(
    st.none(),
    st.integers(),
    st.text(),
    st.lists(st.integers(), max_size=3),
    st.tuples(st.text(), st.integers()),
    st.dictionaries(
        st.one_of(st.integers(), st.none(), st.tuples(st.text())),
        st.integers(),
        min_size=1,
        max_size=3,
    ),
)

#: Not an integer step: ``TypeError`` (bool and float are rejected even when integral).
bad_steps = st.one_of(
    st.booleans(),
    st.floats(),
    st.text(max_size=5),
    st.just(b"3"),
    st.just([1]),
    st.just(1 + 0j),
)

#: Integral but negative: ``ValueError``.
negative_steps = st.integers(max_value=-1)

#: Numbers wandb records and gives back equal (JSON, exact): ints within 2**53, floats small
#: enough that wandb's mean of a few stays finite.
json_numbers = st.one_of(
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
)


def _wandb_accepts(option: str) -> bool:
    """True when the installed wandb's ``define_metric`` accepts ``summary=option`` ("first"
    is newer than wandb 0.19.10; wandb checks against a set written in ``_define_metric``)."""
    import inspect

    from wandb.sdk.wandb_run import Run

    source = inspect.getsource(Run._define_metric)
    return all(f'"{part}"' in source for part in option.split(","))


#: ``define_metric(summary=...)`` options the installed wandb accepts ("copy" is deprecated,
#: "best" needs ``goal=``, which wandb 0.31 no longer has); a comma joins several.
summary_options = st.sampled_from(
    tuple(
        option
        for option in ("min", "max", "mean", "last", "first", "none", "min,max")
        if _wandb_accepts(option)
    )
)
