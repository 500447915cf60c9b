"""Transparency (docs/design.md, "Two promises"): stepsync on, wandb records what plain wandb does.

Plain wandb is the oracle. Every program below runs twice in this process, each on its own
offline run: natively, then under ``stepsync.patch()``. Both run files are read back and
compared: rows (every key and value at every ``_step``), the live summary, the recorded summary,
the metric records, the effective metric definitions, the config, and what ``run.step`` returned.
The only allowed differences are the axis key in each row and stepsync's own declarations on
that axis. Programs that log below wandb's current step (data plain wandb drops) are checked on
the stepsync side alone: every value lands once, at its logical step, and the summary is the
value at the newest logical step.

Measured in wandb 0.31 (the facts the expectations rest on):
- ``run.step`` is wandb-core's next step; a late explicit step (even with ``commit=True``) leaves
  it unchanged, and a call that raises leaves it unchanged too.
- ``define_metric(k, summary="min")`` makes the summary of ``k`` a dict, ``{"min": v}``, in the
  live summary and in the file's summary record alike ("last" too: ``{"last": v}``); "none"
  removes ``k`` from the summary; options given twice merge (``{"min": .., "max": ..}``). The
  aggregation covers every row of ``k``, including rows logged before the definition.
- A glob applies to nested keys joined with ".": ``"train.*"`` covers ``{"train": {"loss": 1}}``
  (the summary then holds ``{"train": {"loss": {"min": 1}}}``); ``"train/*"`` does not.
- ``step_metric="epoch"`` (``step_sync`` defaults to True then) puts the last ``epoch`` into every
  row of the key that lacks one, ``0`` if ``epoch`` was never logged.
- ``overwrite=True`` replaces the earlier definition of the name (its summary option is gone).
- ``define_metric(k, ...)`` by name, made after ``k`` was logged with a nested dict or a histogram
  as its value, takes ``k`` out of the live summary (``run.summary``); the file's summary records
  keep it. Scalars stay.
- ``run.summary`` holds nested keys nested (``{"train": {"loss": 1}}``), a histogram as its dict.
- A media file is named after wandb's Python-side step counter at the moment the row is sent
  (``media/images/img_<n>_<hash>.png``), which a buffered commit cannot reproduce: that number is
  masked (the content hash is compared).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import wandb
from _wandb_helpers import (
    AXIS,
    NON_USER_KEYS,
    WANDB_VERSION,
    derived_from_glob,
    fold_updates,
    recorded_summary,
)
from google.protobuf.json_format import MessageToDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import commits, json_numbers, summary_options

import stepsync
from stepsync._wandb import DEFINITIONS_HIDE_NESTED_SUMMARIES, MERGES_NESTED_DICTS
from stepsync.history import read_history, read_records

#: wandb 0.15 to 0.17 run the Python backend (wandb-core from 0.18).
PYTHON_BACKEND = WANDB_VERSION < (0, 18, 0)


#: The profile's count (``ci`` 200: two runs an example, about 0.3 s each, so the file takes
#: about two minutes on two cores when it passes; a failure adds up to five minutes of shrinking).
#: A quarter on wandb < 0.18, where a run takes about 2 s (measured on 0.15.12: ``wandb.init`` and
#: ``finish`` each wait about 1 s on wandb's own polling).
EXAMPLES = settings.default.max_examples // (4 if PYTHON_BACKEND else 1)
#: Function-scoped fixtures are safe here: ``offline_run`` is a factory, each example its own runs.
PROPERTY = settings(
    max_examples=EXAMPLES,
    suppress_health_check=[
        *settings.default.suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ],
)
#: Never compared: wandb's timing keys and stepsync's axis key.
IGNORED = NON_USER_KEYS | {AXIS}
#: What a program writes into its reused objects after each call: it must never reach wandb.
SENTINEL = -999.5
CONFIG = {"lr": 0.1, "layers": [64, 64], "opt": {"name": "adam"}}
#: A config key set right after the live summary is read: the rows before it were in that summary.
READ_MARK = "summary_read_here"
#: Not in a summary (a key with ``summary="none"``, or never written).
MISSING = object()
_MEDIA_STEP = re.compile(r"^(media/.+/.+)_\d+_([0-9a-f]+)(\.\w+)$")


# --- Programs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """One value as the program builds it at the call.

    kind: "py" (the payload itself), "f32" / "f64" / "i64" (a numpy scalar), "array" (a numpy
    array; ``shared``: the program's own array of that size, filled with SENTINEL after the
    call), "image" (a 4x4 ``wandb.Image``), "dict" (payload: ``((key, Value), ...)``).
    """

    kind: str
    payload: Any
    shared: bool = False


@dataclass(frozen=True)
class Log:
    """``run.log(data, step=..., commit=...)``; ``plus``: ``step=run.step + plus``.

    ``reuse``: ``items`` are written into the program's one dict (nested dicts updated in place),
    which is logged and then has every leaf overwritten with SENTINEL.
    """

    items: tuple[tuple[str, Value], ...]
    step: int | None = None
    commit: bool | None = None
    plus: int | None = None
    reuse: bool = False


@dataclass(frozen=True)
class ReadStep:
    """A bare read of ``run.step``."""


@dataclass(frozen=True)
class Define:
    """``run.define_metric(name, **options)``."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()


Op = Log | ReadStep | Define


class StepModel:
    """wandb-core's step rules, as measured in wandb 0.31."""

    def __init__(self) -> None:
        self.current = 0  # the step of the next row (what ``run.step`` returns)

    def log(self, step: int | None, commit: bool | None) -> int:
        """The step a call writes to; moves ``current`` as wandb does."""
        if step is None:
            target = self.current
            if commit is None or commit:
                self.current += 1
            return target
        if step > self.current:  # the open row is flushed, the new one opens at ``step``
            self.current = step
        if commit and step >= self.current:
            self.current = step + 1
        return step  # a step below ``current`` is late: plain wandb drops it, ``current`` stays


# --- Strategies ----------------------------------------------------------------------------

#: Keys of numeric scalars; "epoch" is also the user's step metric, "note" holds text/bools.
NUMERIC_KEYS = ("loss", "acc", "val/acc", "val/loss", "dbg/grad", "epoch", "x")
#: Names given to define_metric: keys by name (a nested one too) and non-overlapping globs
#: (overlapping globs bind nondeterministically in wandb-core).
DEFINE_NAMES = ("loss", "acc", "val/acc", "x", "epoch", "train.loss", "val/*", "dbg/*", "train.*")

#: Python numbers and numpy scalars (float32, float64, int64), as wandb converts them.
numbers = st.one_of(
    st.builds(Value, st.just("py"), json_numbers),
    st.builds(Value, st.just("f32"), st.floats(-1e9, 1e9, allow_nan=False, width=32)),
    st.builds(Value, st.just("f64"), st.floats(-1e12, 1e12, allow_nan=False)),
    st.builds(Value, st.just("i64"), st.integers(-(2**53), 2**53)),
)
texts = st.builds(Value, st.just("py"), st.one_of(st.text(max_size=8), st.booleans()))


def arrays(size: int) -> st.SearchStrategy[Value]:
    """A numpy array of ``size`` floats: a list in wandb up to 32 elements, else a histogram."""
    values = st.lists(st.integers(-50, 50), min_size=size, max_size=size).map(
        lambda xs: tuple(x / 4 for x in xs)
    )
    return st.builds(Value, st.just("array"), values, st.booleans())


nested = st.builds(
    Value,
    st.just("dict"),
    st.lists(
        st.tuples(st.sampled_from(("loss", "lr")), numbers), max_size=2, unique_by=lambda kv: kv[0]
    ).map(tuple),
)


def item_lists(media: bool, min_size: int = 0) -> st.SearchStrategy[tuple[tuple[str, Value], ...]]:
    """The items of one call's data: distinct top-level keys."""
    item = st.one_of(
        st.tuples(st.sampled_from(NUMERIC_KEYS), numbers),
        st.tuples(st.just("note"), texts),
        st.tuples(st.just("train"), nested),
        st.tuples(st.just("w"), arrays(4)),
        st.tuples(st.just("hist"), arrays(40)),
        *(
            [st.tuples(st.just("img"), st.builds(Value, st.just("image"), st.integers(0, 255)))]
            if media
            else []
        ),
    )
    return st.lists(item, min_size=min_size, max_size=4, unique_by=lambda kv: kv[0]).map(tuple)


@st.composite
def definitions(
    draw: st.DrawFn, step_metric: bool = True, names: tuple[str, ...] = DEFINE_NAMES
) -> Define:
    """A user ``define_metric`` call of any kind wandb 0.31 accepts."""
    name = draw(st.sampled_from(names))
    options: dict[str, Any] = {}
    if step_metric and name != "epoch" and draw(st.booleans()):
        options["step_metric"] = "epoch"
    if step_metric and draw(st.booleans()):
        options["step_sync"] = draw(st.booleans())
    if draw(st.booleans()):
        options["summary"] = draw(summary_options)
    if draw(st.integers(0, 3)) == 0:
        options["hidden"] = True
    if step_metric and draw(st.integers(0, 3)) == 0:
        options["overwrite"] = True
    return Define(name, tuple(options.items()))


def covers(name: str, key: str) -> bool:
    """``define_metric(name)`` applies to the (dotted) ``key``: by name, or as a glob."""
    return key.startswith(name[:-1]) if name.endswith("*") else key == name


def without_crashing_summary(definition: Define, logged: set[str]) -> Define:
    """``definition``, without a summary option the Python backend would crash on.

    wandb < 0.18 crashes its own internal process, natively (measured on 0.15.12 and 0.17.9:
    ``TypeError: 'int' object does not support item assignment`` in
    ``HandleManager._update_summary_metrics``, then ``BrokenPipeError`` or exit status 255), when
    a key already logged gets a summary option: its summary holds the value, not a dict.
    """
    options = dict(definition.options)
    summary = options.get("summary")
    if summary in (None, "none") or not any(covers(definition.name, key) for key in logged):
        return definition
    del options["summary"]
    return Define(definition.name, tuple(options.items()))


@st.composite
def no_drop_programs(draw: st.DrawFn, max_ops: int = 12) -> list[Op]:
    """Programs of 1..max_ops calls from which plain wandb drops nothing: no step below current."""
    model = StepModel()
    ops: list[Op] = []
    logged: set[str] = set()  # the dotted keys logged so far
    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(
            st.sampled_from(
                ("stepless", "explicit", "read", "define", "explicit", "stepless", "bare")
            )
        )
        if kind == "define":
            definition = draw(definitions())
            if PYTHON_BACKEND:
                definition = without_crashing_summary(definition, logged)
            ops.append(definition)
            continue
        if kind == "bare":
            ops.append(ReadStep())
            continue
        items = draw(item_lists(media=True))
        logged.update(dotted_keys(items))
        reuse = draw(st.integers(0, 4)) == 0
        commit = draw(commits)
        if kind == "stepless":
            ops.append(Log(items, commit=commit, reuse=reuse))
            model.log(None, commit)
        elif kind == "explicit":
            step = model.current + draw(st.sampled_from((0, 1, 2, 5)))
            ops.append(Log(items, step=step, commit=commit, reuse=reuse))
            model.log(step, commit)
        else:
            plus = draw(st.sampled_from((0, 1, 2)))
            ops.append(Log(items, commit=commit, plus=plus, reuse=reuse))
            model.log(model.current + plus, commit)
    return ops


def dotted_keys(items: tuple[tuple[str, Value], ...]) -> Iterator[str]:
    """The dotted key of every leaf ``items`` log (``train.loss`` for a nested one)."""
    for key, value in items:
        if value.kind == "dict":
            yield from (f"{key}.{inner}" for inner, _ in value.payload)
        else:
            yield key


#: Names and summary options for late programs. Only what has one meaning under late rows: the
#: newest logical step's value, or wandb's aggregation over every kept value ("first"/"last" would
#: need file order or logical order pinned; they are not).
#: wandb < 0.18 expands a glob only when a matching key is first written, and nested keys leave
#: the summary from the first definition on: file order would decide, and stepsync writes in
#: logical order. There, late programs define by name only (defined before any row).
LATE_NAMES = ("loss", "acc") if PYTHON_BACKEND else ("loss", "acc", "val/*", "train.*")
LATE_SUMMARIES = ("min", "max", "mean", "none", "min,max")


@st.composite
def late_programs(draw: st.DrawFn, max_ops: int = 14) -> list[Op]:
    """Programs that also log explicit steps below wandb's current step (data wandb drops).

    Definitions (at most one per name, summary options only) come first.
    """
    names = draw(st.lists(st.sampled_from(LATE_NAMES), max_size=2, unique=True))
    ops: list[Op] = [
        Define(name, (("summary", draw(st.sampled_from(LATE_SUMMARIES))),)) for name in names
    ]
    model = StepModel()
    late = False
    for _ in range(draw(st.integers(1, max_ops))):
        items = draw(item_lists(media=False, min_size=1))
        reuse = draw(st.integers(0, 4)) == 0
        commit = draw(commits)
        if draw(st.booleans()):
            ops.append(Log(items, commit=commit, reuse=reuse))
            model.log(None, commit)
            continue
        step = draw(st.integers(0, model.current + 2))
        late = late or step < model.current
        ops.append(Log(items, step=step, commit=commit, reuse=reuse))
        model.log(step, commit)
    if not late:  # at least one late call
        if model.current == 0:
            ops.append(Log(draw(item_lists(media=False, min_size=1))))
        ops.append(Log(draw(item_lists(media=False, min_size=1)), step=0, commit=draw(commits)))
    return ops


# --- Running a program ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What one run of a program recorded, normalized for comparison."""

    rows: list[dict[str, Any]]
    live_summary: dict[str, Any]
    recorded_summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    definitions: dict[str, dict[str, Any]]
    config: dict[str, Any]
    step_reads: list[int]
    program: Program | None  # None for a hand-written program
    #: As read, nothing left out (the axis key included).
    raw_rows: list[dict[str, Any]]
    raw_live: dict[str, Any]
    raw_recorded: dict[str, Any]
    raw_metrics: list[dict[str, Any]]
    rows_at_read: int  # how many rows wandb had when the live summary was read
    #: How many rows came before the first metric definition in the file (all, with none).
    rows_before_definitions: int


@dataclass(frozen=True)
class Write:
    """One leaf value a call wrote: where the model says it goes, and its value at the call."""

    path: tuple[str, ...]
    step: int
    value: Any
    late: bool  # below wandb's current step: plain wandb drops it
    call: int  # the index of the call in ``Program.calls``


class _Image:
    """Stands for a ``wandb.Image`` in expected values (its file name is wandb's business)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and other.get("_type") == "image-file"

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "<image-file>"


IMAGE = _Image()


class Program:
    """Runs ops on one run, keeping the objects a user would reuse across calls."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.reused: dict[str, Any] = {}
        self.arrays = {4: np.zeros(4), 40: np.zeros(40)}
        self.model = StepModel()
        self.step_reads: list[int] = []
        #: The model's prediction: per step, the value at the call of every leaf written there.
        self.expected: dict[int, dict[tuple[str, ...], Any]] = {}
        self.writes: list[Write] = []
        #: (step, late) of every call, empty ones too (plain wandb writes an empty row).
        self.calls: list[tuple[int, bool]] = []
        #: The top-level keys of every call (an empty dict's too: wandb < 0.18 replaces by them).
        self.keys: list[frozenset[str]] = []

    def build(self, value: Value, into: Any = None) -> Any:
        if value.kind == "py":
            return value.payload
        if value.kind in ("f32", "f64", "i64"):
            return {"f32": np.float32, "f64": np.float64, "i64": np.int64}[value.kind](
                value.payload
            )
        if value.kind == "array":
            if not value.shared:
                return np.array(value.payload)
            array = self.arrays[len(value.payload)]
            array[:] = value.payload
            return array
        if value.kind == "image":
            return wandb.Image(np.full((4, 4, 3), value.payload, dtype=np.uint8))
        target = into if isinstance(into, dict) else {}
        for key, inner in value.payload:
            target[key] = self.build(inner)
        return target

    def data(self, op: Log) -> dict[str, Any]:
        if not op.reuse:
            return {key: self.build(value) for key, value in op.items}
        for key, value in op.items:
            self.reused[key] = self.build(value, into=self.reused.get(key))
        return self.reused

    def after_call(self, op: Log, data: dict[str, Any]) -> None:
        """Overwrite what the program owns, in place, as a training loop reusing buffers does."""
        for array in self.arrays.values():
            array[:] = SENTINEL
        if op.reuse:
            _poison(data)

    def step_read(self) -> int:
        step = self.run.step
        self.step_reads.append(step)
        return step

    def perform(self, ops: list[Op]) -> Program:
        for op in ops:
            self.execute(op)
        return self

    def execute(self, op: Op) -> None:
        if isinstance(op, Define):
            self.run.define_metric(op.name, **dict(op.options))
            return
        if isinstance(op, ReadStep):
            self.step_read()
            return
        step = op.step if op.plus is None else self.step_read() + op.plus
        data = self.data(op)
        at_call = expected_json(data)
        if step is None and op.commit is None:
            self.run.log(data)
        elif step is None:
            self.run.log(data, commit=op.commit)
        else:
            self.run.log(data, step=step, commit=op.commit)
        self.after_call(op, data)
        late = step is not None and step < self.model.current
        target = self.model.log(step, op.commit)
        self.calls.append((target, late))
        self.keys.append(frozenset(at_call))
        row = self.expected.setdefault(target, {})
        if not MERGES_NESTED_DICTS:  # wandb < 0.18: a key's later value replaces it whole
            for path in [path for path in row if path[0] in at_call]:
                del row[path]
        for path, value in leaves(at_call):
            row[path] = value
            self.writes.append(Write(path, target, value, late, len(self.calls) - 1))


def _poison(data: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            _poison(value)
        elif not isinstance(value, np.ndarray):  # arrays: the shared ones are poisoned already
            data[key] = SENTINEL


def record(
    start: Callable[..., Any], body: Callable[[Any], Any], *, patched: bool, **init: Any
) -> Outcome:
    """Start an offline run (natively, or under ``stepsync.patch()``), run ``body(run)``, read the
    live summary, finish, and read the run file back. ``body`` returns its Program, or the values
    ``run.step`` gave it."""
    if patched:
        stepsync.patch()
    try:
        run = start(config=CONFIG, **init)
        result = body(run)
        live = live_summary(run)
        run.config.update({READ_MARK: True})  # in the file: what wandb had written at the read
        run.finish()
    finally:
        stepsync.unpatch()
    program = result if isinstance(result, Program) else None
    reads = program.step_reads if program else list(result or ())
    return outcome_of(run, live, reads, program)


def execute(start: Callable[..., Any], ops: list[Op], *, patched: bool) -> Outcome:
    """Run a generated program on a fresh run; see ``record``."""
    return record(start, lambda run: Program(run).perform(ops), patched=patched)


def outcome_of(
    run: Any, live: dict[str, Any], step_reads: list[int], program: Program | None
) -> Outcome:
    """Read a finished run's file back into an Outcome."""
    records = read_records(run.settings.sync_file)
    raw_rows = read_history(run.settings.sync_file)
    # wandb before wandb-core wrote what a glob expands to per key itself, in no fixed order:
    # derived records, left out (the glob's own record stays).
    metrics = [
        MessageToDict(r.metric, preserving_proto_field_name=True)
        for r in records
        if r.WhichOneof("record_type") == "metric" and not derived_from_glob(r.metric)
    ]
    summary = recorded_summary(records)
    return Outcome(
        rows=[normalized(row) for row in raw_rows],
        live_summary=normalized(live),
        recorded_summary=normalized(summary),
        metrics=[m for m in metrics if AXIS not in (m.get("name"), m.get("step_metric"))],
        definitions=effective_definitions(metrics),
        config=recorded_config(records),
        step_reads=step_reads,
        program=program,
        raw_rows=raw_rows,
        raw_live=live,
        raw_recorded=summary,
        raw_metrics=metrics,
        rows_at_read=rows_before_mark(records),
        rows_before_definitions=rows_before_definitions(records),
    )


# --- Reading and normalizing ---------------------------------------------------------------


def expected_json(value: Any) -> Any:
    """What wandb records for ``value`` logged now (numpy and media converted as wandb does)."""
    if isinstance(value, dict):
        return {key: expected_json(inner) for key, inner in value.items()}
    if isinstance(value, wandb.Image):
        return IMAGE
    if isinstance(value, np.ndarray):
        if value.size > 32:  # wandb's maybe_compress_history: a 32-bin histogram
            return json.loads(json.dumps(wandb.Histogram(value, num_bins=32).to_json()))
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) of every leaf; a dict with ``_type`` (media, histogram) is a leaf, an empty
    one none (wandb records nothing for it)."""
    if isinstance(value, dict) and "_type" not in value:
        for key, inner in value.items():
            yield from leaves(inner, (*path, key))
    elif path:
        yield path, value


def normalized(mapping: dict[str, Any]) -> dict[str, Any]:
    """Without the ignored top-level keys, media file names without wandb's step counter."""
    return {key: _mask_media(value) for key, value in mapping.items() if key not in IGNORED}


def _mask_media(value: Any) -> Any:
    if isinstance(value, dict):
        masked = {key: _mask_media(inner) for key, inner in value.items()}
        if isinstance(masked.get("path"), str) and "_type" in masked:
            masked["path"] = _MEDIA_STEP.sub(r"\1_<n>_\2\3", masked["path"])
        return masked
    if isinstance(value, list):
        return [_mask_media(inner) for inner in value]
    return value


def live_summary(run: Any) -> dict[str, Any]:
    """The run's summary as wandb-core has it now, as plain nested dicts (one round trip)."""
    return dict(run.summary._as_dict())


def rows_before_mark(records: list[Any]) -> int:
    """How many history records come before the config record that sets READ_MARK."""
    rows = 0
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "config" and any(item.key == READ_MARK for item in record.config.update):
            return rows
        rows += kind == "history"
    raise AssertionError("no read mark in the run file")


def rows_before_definitions(records: list[Any]) -> int:
    """How many history records come before the first metric record (all of them with none)."""
    rows = 0
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "metric":
            return rows
        rows += kind == "history"
    return rows


def recorded_config(records: list[Any]) -> dict[str, Any]:
    """The config the file ends with, without wandb's own ``_wandb`` entry."""
    config = fold_updates(records, "config")
    config.pop("_wandb", None)
    return config


def effective_definitions(metrics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per key the program logs, its definition as wandb-core resolves it (docs/design.md):
    definitions of one name merge (last step metric, ORed hidden/step_sync, summary options
    added) unless ``overwrite``; a definition by name beats any glob. A step metric on stepsync's
    axis counts as none (stepsync may add it), and ``step_sync`` only means something with one."""
    keys = [*NUMERIC_KEYS, "note", "train.loss", "train.lr", "w", "hist", "img"]
    resolved: dict[str, dict[str, Any]] = {}
    for key in keys:
        chosen = [m for m in metrics if m.get("name") == key] or [
            m
            for m in metrics
            if m.get("glob_name") and key.startswith(m["glob_name"].removesuffix("*"))
        ]
        definition: dict[str, Any] = {}
        for metric in chosen:
            if metric.get("_control", {}).get("overwrite"):
                definition = {}
            options = metric.get("options", {})
            if metric.get("step_metric"):
                definition["step_metric"] = metric["step_metric"]
            for flag in ("hidden", "step_sync"):
                definition[flag] = definition.get(flag, False) or options.get(flag, False)
            summary = {op for op, on in metric.get("summary", {}).items() if on}
            definition["summary"] = definition.get("summary", set()) | summary
        if definition.get("step_metric") in (None, AXIS):
            definition.pop("step_metric", None)
            definition.pop("step_sync", None)
        if any(definition.values()):
            resolved[key] = {k: v for k, v in definition.items() if v}
    return resolved


# --- Checks --------------------------------------------------------------------------------


def assert_native_dropped_nothing(native: Outcome) -> None:
    """The oracle run kept every value at the step the model says (else the program is invalid)."""
    steps = [row["_step"] for row in native.rows]
    assert steps == sorted(set(steps)), f"one row per step, ascending: {steps}"
    by_step = {row["_step"]: dict(leaves(row)) for row in native.rows}
    assert native.program is not None
    expected = native.program.expected
    assert set(by_step) == set(expected), "native rows at other steps than modeled"
    for step, values in expected.items():
        for path, value in values.items():
            assert path in by_step[step], f"native dropped {path} at step {step}"
            assert by_step[step][path] == value, f"{path} at step {step}"


def assert_same_records(synced: Outcome, native: Outcome) -> None:
    """Every recorded thing equal, apart from the axis key and stepsync's axis declarations."""
    assert synced.step_reads == native.step_reads, "run.step returned other values"
    assert synced.rows == native.rows, "history rows differ"
    assert synced.live_summary == native.live_summary, "live summary differs"
    assert synced.recorded_summary == native.recorded_summary, "recorded summary differs"
    assert synced.metrics == native.metrics, "metric records differ"
    assert synced.definitions == native.definitions, "effective metric definitions differ"
    assert synced.config == native.config, "config differs"


def summary_at(summary: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The summary entry at ``path`` (nested keys nested), or MISSING."""
    level: Any = summary
    for key in path:
        if not isinstance(level, dict) or key not in level:
            return MISSING
        level = level[key]
    return level


def summary_options_of(path: tuple[str, ...], ops: list[Op]) -> set[str] | None:
    """The summary options the program's definitions give the key at ``path`` (None: default)."""
    name = ".".join(path)
    by_name = [op for op in ops if isinstance(op, Define) and op.name == name]
    chosen = by_name or [
        op
        for op in ops
        if isinstance(op, Define)
        and op.name.endswith("*")
        and name.startswith(op.name.removesuffix("*"))
    ]
    options: set[str] = set()
    for op in chosen:
        given = dict(op.options).get("summary")
        if given:
            options |= set(given.split(","))
    return options or None


# --- Tests ---------------------------------------------------------------------------------


class TestNoDropPrograms:
    @PROPERTY
    @given(program=no_drop_programs())
    def test_stepsync_records_what_plain_wandb_records(self, offline_run, program):
        """For programs plain wandb drops nothing from, stepsync records exactly the same."""
        native = execute(offline_run, program, patched=False)
        assert_native_dropped_nothing(native)
        synced = execute(offline_run, program, patched=True)
        assert_same_records(synced, native)

    @settings(PROPERTY, max_examples=max(10, EXAMPLES // 10))
    @given(program=no_drop_programs())
    def test_the_oracle_is_deterministic(self, offline_run, program):
        """Two native runs of a program record the same: differences are stepsync's, not noise."""
        first = execute(offline_run, program, patched=False)
        assert_native_dropped_nothing(first)
        assert_same_records(execute(offline_run, program, patched=False), first)


class TestLatePrograms:
    @PROPERTY
    @given(program=late_programs())
    def test_late_values_land_once_and_the_newest_step_is_the_summary(self, offline_run, program):
        """Late data: each value lands once at its logical step; summary = newest logical step."""
        synced = execute(offline_run, program, patched=True)
        assert synced.program is not None
        writes, calls = synced.program.writes, synced.program.calls
        landed: dict[tuple[tuple[str, ...], int], list[Any]] = {}
        for row in synced.raw_rows:
            assert AXIS in row, f"a row without the axis key: {row}"
            for path, value in user_leaves(row):
                landed.setdefault((path, row[AXIS]), []).append(value)
        written: dict[tuple[tuple[str, ...], int], list[Any]] = {}
        for write in writes:
            written.setdefault((write.path, write.step), []).append(write.value)
        if MERGES_NESTED_DICTS:
            assert set(landed) == set(written), "values at other logical steps than logged"
        else:  # wandb < 0.18: a later dict under a key replaces that key's earlier leaves whole
            assert set(landed) <= set(written), "values at other logical steps than logged"
            for path, step in set(written) - set(landed):
                assert replaced_later(synced.program, path, step), f"{path} at {step} never landed"
            writes = [w for w in writes if (w.path, w.step) in landed]
        for where, values in landed.items():
            unused = list(written[where])  # each landed value was written, and lands once
            for value in values:  # (a write merged away by a later one at its step lands never)
                assert value in unused, f"{where}: {value!r} landed more often than written"
                unused.remove(value)
            assert values[-1] == written[where][-1], f"{where}: the last write is not the last row"

        undefined = synced.rows_before_definitions
        final = expected_summary(program, writes, calls, synced.raw_rows, undefined)
        for path, value in final.items():
            assert summary_at(synced.raw_recorded, path) == value, f"recorded summary of {path}"

        # The live summary was read before finish. Every step below wandb's current one is
        # closed: plain wandb has written it, so must stepsync. A late row may still wait in
        # stepsync's buffer; the summary is then that of the rows written so far.
        seen = synced.raw_rows[: synced.rows_at_read]
        closed = {step for step, late in calls if step < synced.program.model.current and not late}
        assert closed <= {row[AXIS] for row in seen}, "a closed step was held back at a read"
        live = summary_of_rows(program, seen, undefined)
        for path in final:
            assert summary_at(synced.raw_live, path) == live.get(path, MISSING), (
                f"live summary of {path}"
            )


def replaced_later(program: Program, path: tuple[str, ...], step: int) -> bool:
    """True when a call after the last write of ``path`` at ``step`` wrote ``path[0]`` at that
    step (an empty dict too) without ``path``: wandb < 0.18 keeps only its value of the key."""
    last = max(w.call for w in program.writes if (w.path, w.step) == (path, step))
    later = range(last + 1, len(program.calls))
    written = {w.call for w in program.writes if w.path == path}
    return any(
        program.calls[i][0] == step and path[0] in program.keys[i] and i not in written
        for i in later
    )


def user_leaves(row: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """The leaves of a row the user logged (no ``_step``, timing keys or axis key)."""
    return ((path, value) for path, value in leaves(normalized(row)) if path != ("_step",))


def summary_of_rows(
    ops: list[Op], rows: list[dict[str, Any]], undefined: int
) -> dict[tuple[str, ...], Any]:
    """The summary ``rows`` (stepsync's, in file order; the first ``undefined`` of them written
    before any metric definition) should give: per leaf, its value in the row of the newest
    logical step (the later row at a tie), or the user's aggregation."""
    newest: dict[tuple[str, ...], tuple[int, Any]] = {}
    for row in rows:
        for path, value in user_leaves(row):
            if path not in newest or row[AXIS] >= newest[path][0]:
                newest[path] = (row[AXIS], value)
    return {
        (AXIS,): max((row[AXIS] for row in rows), default=MISSING),
        **summary_entries(ops, newest, rows, undefined),
    }


def summary_entries(
    ops: list[Op],
    newest: dict[tuple[str, ...], tuple[int, Any]],
    rows: list[dict[str, Any]],
    undefined: int,
) -> dict[tuple[str, ...], Any]:
    """Per leaf, from its (step, value) at its newest logical step: that value, or the user's
    ``summary=`` aggregation over the values kept in ``rows``; MISSING for "none", for a leaf
    no row kept, one wandb < 0.18 leaves out or one it replaced whole."""
    kept: dict[tuple[str, ...], list[Any]] = {}
    for row in rows:
        for path, value in user_leaves(row):
            kept.setdefault(path, []).append(value)
    entries: dict[tuple[str, ...], Any] = {}
    for path, (_, value) in newest.items():
        options = summary_options_of(path, ops)
        if (
            path not in kept
            or left_out_of_summary(path, options, ops)
            or replaced_whole(path, rows, undefined)
        ):
            entries[path] = MISSING
        else:
            entries[path] = _summary_entry(options, value, kept[path])
    return entries


def left_out_of_summary(path: tuple[str, ...], options: set[str] | None, ops: list[Op]) -> bool:
    """wandb < 0.18: once the user defines a metric, nested keys without a summary option are
    left out of the summary (stepsync writes them back only when its own are the only ones)."""
    return (
        DEFINITIONS_HIDE_NESTED_SUMMARIES
        and len(path) > 1
        and options is None
        and any(isinstance(op, Define) for op in ops)
    )


def replaced_whole(path: tuple[str, ...], rows: list[dict[str, Any]], undefined: int) -> bool:
    """wandb < 0.18, before any metric is defined, sets a row's top-level keys in the summary
    whole: a nested leaf is gone once such a row holds its key without it (``{"train": {}}``),
    until a later row writes the leaf again."""
    if MERGES_NESTED_DICTS or len(path) == 1:
        return False
    holding = [i for i, row in enumerate(rows) if path in dict(user_leaves(row))]
    last = holding[-1] if holding else -1
    return any(path[0] in rows[i] for i in range(last + 1, min(undefined, len(rows))))


def _summary_entry(options: set[str] | None, value: Any, kept: list[Any]) -> Any:
    if options is None:
        return value
    if options == {"none"}:
        return MISSING
    return pytest.approx(aggregate(options, kept))


def expected_summary(
    ops: list[Op],
    writes: list[Write],
    calls: list[tuple[int, bool]],
    rows: list[dict[str, Any]],
    undefined: int,
) -> dict[tuple[str, ...], Any]:
    """Per leaf: its entry (``summary_entries``) from its value at its newest logical step (the
    later write at a tie); the axis key: the newest logical step of ``calls``."""
    newest: dict[tuple[str, ...], tuple[int, Any]] = {}
    for write in writes:  # call order: at one step, the later write wins
        if write.path not in newest or write.step >= newest[write.path][0]:
            newest[write.path] = (write.step, write.value)
    return {
        (AXIS,): max((s for s, _ in calls), default=MISSING),
        **summary_entries(ops, newest, rows, undefined),
    }


def aggregate(options: set[str], values: list[Any]) -> dict[str, Any]:
    """wandb's own summary aggregation over every kept value, one entry per option."""
    functions = {"min": min, "max": max, "mean": lambda xs: sum(map(float, xs)) / len(xs)}
    return {op: functions[op](values) for op in sorted(options)}


# --- Known regressions (issue 15), one program each ---------------------------------------


def both(
    start: Callable[..., Any], body: Callable[[Any], Any], **init: Any
) -> tuple[Outcome, Outcome]:
    """``body`` run natively, then under stepsync: (native, synced)."""
    return record(start, body, patched=False, **init), record(start, body, patched=True, **init)


def without_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "_step"} for row in rows]


class TestRegressions:
    def test_case_1_values_captured_at_call(self, offline_run):
        """A dict reused every step and a numpy array are recorded as they were at the call."""

        def body(run: Any) -> None:
            metrics: dict[str, Any] = {"train": {"loss": 0.0}}
            weights = np.zeros(3)
            for step in range(4):
                metrics["train"]["loss"] = step / 2
                weights[:] = step
                metrics["w"] = weights
                run.log(metrics, step=step)
                metrics["train"]["loss"] = SENTINEL  # the loop's next batch, in place
                weights[:] = SENTINEL

        native, synced = both(offline_run, body)
        expected = [{"train": {"loss": s / 2}, "w": [s] * 3, "_step": s} for s in range(4)]
        assert native.rows == expected
        assert synced.rows == native.rows
        assert synced.live_summary == native.live_summary
        assert synced.recorded_summary == native.recorded_summary

    def test_case_2_late_value_is_not_the_summary(self, offline_run):
        """A late ``log({"loss": 100.0}, step=3)`` after rows 0..9 lands, but is not the summary."""

        def body(run: Any) -> None:
            for step in range(10):
                run.log({"loss": float(step)})
            run.log({"loss": 100.0}, step=3)

        native, synced = both(offline_run, body)
        assert native.live_summary["loss"] == native.recorded_summary["loss"] == 9
        assert synced.live_summary["loss"] == 9
        assert synced.recorded_summary["loss"] == 9
        assert [(r[AXIS], r["loss"]) for r in synced.raw_rows if r[AXIS] == 3] == [
            (3, 3),
            (3, 100),
        ]
        assert synced.raw_live[AXIS] == synced.raw_recorded[AXIS] == 9

    def test_case_3_user_globs_keep_summary_and_hidden(self, offline_run):
        """``define_metric("val/*", summary="min")`` and ``("dbg/*", hidden=True)`` still apply."""

        def body(run: Any) -> None:
            run.define_metric("val/*", summary="min")
            run.define_metric("dbg/*", hidden=True)
            for step, loss in enumerate((3.0, 1.0, 2.0)):
                run.log({"val/loss": loss, "dbg/grad": step})

        native, synced = both(offline_run, body)
        assert native.live_summary["val/loss"] == {"min": 1}
        assert synced.live_summary["val/loss"] == {"min": 1}
        assert synced.live_summary == native.live_summary
        assert synced.recorded_summary == native.recorded_summary
        assert synced.metrics == native.metrics
        assert native.definitions["dbg/grad"] == {"hidden": True}
        assert synced.definitions == native.definitions
        assert synced.rows == native.rows

    @pytest.mark.parametrize("define_first", [True, False], ids=["defined-first", "logged-first"])
    def test_case_4_step_sync_false_adds_no_step_metric_value(self, offline_run, define_first):
        """``define_metric("x", step_metric="epoch", step_sync=False)``: no epoch put into rows."""

        def body(run: Any) -> None:
            if not define_first:
                run.log({"x": 0.5})
            run.define_metric("x", step_metric="epoch", step_sync=False)
            run.log({"epoch": 1})
            run.log({"x": 1.0})
            run.log({"x": 2.0, "epoch": 2})
            run.log({"x": 3.0})

        native, synced = both(offline_run, body)
        rows = [{"epoch": 1}, {"x": 1.0}, {"x": 2.0, "epoch": 2}, {"x": 3.0}]
        assert without_step(native.rows) == ([] if define_first else [{"x": 0.5}]) + rows
        assert synced.rows == native.rows
        assert synced.definitions == native.definitions

    def test_case_5_run_step_after_an_explicit_step(self, offline_run):
        """After ``log({"a": 1}, step=3)``, ``run.step`` reads 3 and ``step=run.step + 1`` is 4."""

        def body(run: Any) -> list[int]:
            wandb.log({"a": 1}, step=3)
            reads = [wandb.run.step]
            wandb.log({"x": 1}, step=wandb.run.step + 1)
            return reads

        native, synced = both(offline_run, body, reinit="finish_previous")  # sets wandb.run
        assert native.step_reads == [3]
        assert native.rows == [{"a": 1, "_step": 3}, {"x": 1, "_step": 4}]
        assert synced.step_reads == native.step_reads
        assert synced.rows == native.rows

    def test_case_6_stepless_call_after_commit_true_goes_to_the_next_step(self, offline_run):
        """``log({"a": 1}, step=5, commit=True); log({"b": 1})`` puts b at step 6."""

        def body(run: Any) -> list[int]:
            run.log({"a": 1}, step=5, commit=True)
            reads = [run.step]
            run.log({"b": 1})
            return [*reads, run.step]

        native, synced = both(offline_run, body)
        assert native.rows == [{"a": 1, "_step": 5}, {"b": 1, "_step": 6}]
        assert native.step_reads == [6, 7]
        assert synced.rows == native.rows
        assert synced.step_reads == native.step_reads

    def test_case_7_unserializable_value_raises_at_the_call(self, offline_run):
        """``log({"bad": object(), "ok": 1})`` raises wandb's TypeError; the step keeps the rest."""
        errors: list[str] = []

        def body(run: Any) -> None:
            run.log({"before": 1}, step=0)
            with pytest.raises(TypeError) as raised:
                run.log({"bad": object(), "ok": 1}, step=0)
            errors.append(str(raised.value))
            run.log({"after": 2}, step=0)
            with pytest.raises(TypeError) as raised:
                run.log({"bad": object(), "ok": 1})
            errors.append(str(raised.value))
            run.log({"next": 3}, step=1)

        native, synced = both(offline_run, body)
        assert native.rows == [{"before": 1, "after": 2, "_step": 0}, {"next": 3, "_step": 1}]
        assert errors[2:] == errors[:2]  # stepsync's errors are wandb's own
        assert synced.rows == native.rows
        assert synced.live_summary == native.live_summary

    def test_case_10_glob_step_metric_defined_after_the_first_log(self, offline_run):
        """A glob step metric defined after a first row works as natively; epoch is not declared."""

        def body(run: Any) -> None:
            run.log({"val/acc": 0.5})
            run.define_metric("val/*", step_metric="epoch")
            run.log({"val/acc": 0.6, "epoch": 1})
            run.log({"val/acc": 0.7})  # wandb puts epoch 1 in (step_sync)
            run.log({"epoch": 2})
            run.log({"val/acc": 0.8})

        native, synced = both(offline_run, body)
        assert [row.get("epoch") for row in native.rows] == [None, 1, 1, 2, 2]
        assert synced.rows == native.rows
        assert synced.live_summary == native.live_summary
        assert synced.recorded_summary == native.recorded_summary
        assert synced.definitions == native.definitions
        assert not [m for m in synced.raw_metrics if m.get("name") == "epoch"], (
            "stepsync declared the user's step metric"
        )

    @pytest.mark.skipif(
        PYTHON_BACKEND,
        reason="wandb < 0.18 crashes natively at a summary option for a key already logged",
    )
    def test_definitions_after_the_switch_have_their_native_effect(self, offline_run):
        """After a late row put every key on stepsync's axis, later user definitions (a name
        that now beats a glob, a glob gaining a step metric, an overwrite) resolve as natively;
        only stepsync's axis is added where the user set no step metric."""

        def body(run: Any) -> None:
            run.define_metric("val/*", summary="min", hidden=True)
            for step in range(3):
                run.log({"val/acc": step / 4, "loss": step, "x": 1.0}, step=step)
            run.log({"val/acc": 0.1}, step=0)  # late: dropped natively, the switch under stepsync
            assert run.summary["loss"] == 1  # a read: stepsync commits the closed steps first
            run.define_metric("val/acc", step_metric="epoch")  # by name: the glob stops applying
            run.define_metric("val/*", summary="max")  # the glob grows, for val/loss only
            run.define_metric("loss", summary="mean")
            run.define_metric("loss", overwrite=True, summary="last")
            run.log({"val/acc": 0.9, "val/loss": 0.5, "loss": 3, "x": 2.0, "epoch": 1}, step=3)

        native, synced = both(offline_run, body)
        assert "hidden" not in native.definitions["val/acc"]
        assert synced.definitions == native.definitions
        axis = {m["name"] for m in synced.raw_metrics if m.get("step_metric") == AXIS}
        assert {"loss", "x", "val/loss"} <= axis  # the keys without a user step metric
        assert "epoch" not in axis
