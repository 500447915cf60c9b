"""Stateful property: every value lands exactly once, in the row a plain model predicts.

Rules open and close (nested) scopes, log with and without explicit steps from several sources
and priorities, call ``update_step`` and ``flush``, log late data under each late policy, and
finish the run. ``Model`` predicts the exact rows (logical step, native step, winning values);
each example is checked against the rows a real offline wandb run wrote to its ``.wandb`` file.

Speed: a run costs about 0.2 s to start, so consecutive examples share one run, each with a
fresh ``StepManager`` whose logical steps start at the run's next native step. wandb-core writes
the file in 32 KiB blocks, so after each example two padded "barrier" rows push everything the
example committed to disk, and the reader waits for the first of them (bounded; if it
never shows, the run is finished, which always writes the file out).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from _wandb_helpers import NON_USER_KEYS
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from strategies import commits, late_policies, metric_keys, priorities, sources, steps
from wandb.errors import UsageError

import stepsync
from stepsync import LateStepError, StepManager, logs_metrics, step_scope
from stepsync._live import ATTR
from stepsync.history import read_history

AXIS = "stepsync/step"
EXAMPLES_PER_RUN = 25
BARRIER_PAD = "x" * 33_000  # larger than one 32 KiB block of the run file
BARRIER_TIMEOUT = 20.0

Entry = tuple[int, dict[str, Any]]


def merged(entries: list[Entry]) -> dict[str, Any]:
    """docs/design.md, merging: per key, the lowest priority number wins, then the later write."""
    row: dict[str, Any] = {}
    winner: dict[str, int] = {}
    for priority, data in entries:
        for key, value in data.items():
            if key not in winner or priority <= winner[key]:
                row[key], winner[key] = value, priority
    return row


class Model:
    """docs/design.md as plain data: where every value goes and which rows wandb must write."""

    def __init__(self, base: int, late: str, buffer_size: int) -> None:
        self.late = late
        self.buffer_size = buffer_size
        self.committed = base - 1  # highest logical step committed (the run's rows so far)
        self.last_native = base - 1
        self.frontier = -1  # highest step seen (logged, update_step or scope)
        self.current: int | None = None
        self.pending: dict[int, list[Entry]] = {}
        self.late_next: list[Entry] = []
        self.extra_rows: dict[int, list[list[Entry]]] = {}
        self.extra_rows_committed = 0
        self.rows: list[dict[str, Any]] = []
        self.stats: Counter[str] = Counter()
        self.open_scopes: Counter[int] = Counter()
        self.finished = False

    # ----------------------------------------------------------------- calls

    def log(
        self,
        data: dict[str, Any],
        step: int | None,
        commit: bool | None,
        priority: int,
        scope: int | None,
    ) -> str:
        """Predict one log call; returns "ok", "late" (LateStepError) or "finished" (UsageError)."""
        if self.finished:
            return "finished"
        self.stats["total_logs"] += 1
        target, close = self.resolve(step, commit, scope)
        entry = (priority, dict(data))
        if target <= self.committed:
            outcome = self.late_value(entry)
            if outcome is not None:
                return outcome
        if scope is None and self.is_closed(target):
            # A closed step keeps the first value of a key: a second one opens an extra row;
            # each entry goes into the step's last row, so later writes land in later rows.
            extra_rows = self.extra_rows.setdefault(target, [])
            rows = [self.pending.setdefault(target, []), *extra_rows]
            if any(key in held for _, held in rows[-1] for key in data):
                extra_rows.append([entry])
            else:
                rows[-1].append(entry)
        else:
            self.pending.setdefault(target, []).append(entry)
        self.frontier = max(self.frontier, target)
        if close:
            self.commit_through(target)
        else:
            # More than buffer_size entries pending: the lowest closed steps go at once.
            while self.pending and self.entries() > self.buffer_size:
                lowest = min(self.pending)
                if lowest >= self.frontier:
                    break
                self.commit_through(lowest)
        return "ok"

    def resolve(self, step: int | None, commit: bool | None, scope: int | None) -> tuple[int, bool]:
        """The logical step of a call, and whether the call closes (commits) it."""
        if scope is not None:  # rule 1: the scope wins over an explicit step
            if step is not None and step != scope:
                self.stats["step_conflicts"] += 1
            return scope, False
        if step is not None:  # rule 2; commit=True closes the step, as in wandb
            return step, bool(commit)
        if self.current is not None:  # rule 3
            return self.current, False
        # rule 4: wandb's auto-increment; commit None/True closes the step
        return max(self.frontier, self.committed + 1), commit is None or bool(commit)

    def is_closed(self, target: int) -> bool:
        """A step below the frontier with no open scope: plain wandb has written its row."""
        return target < self.frontier and not self.open_scopes[target]

    def late_value(self, entry: Entry) -> str | None:
        """A value for a committed step: None if it still goes to a bucket of its step."""
        self.stats["late_logs"] += 1
        if self.late == "raise":
            return "late"
        if self.late == "drop":
            self.stats["dropped_logs"] += 1
            return "ok"
        if self.late == "next":
            self.stats["step_conflicts"] += 1
            self.late_next.append(entry)
            return "ok"
        return None  # "axis": an extra row at the true step, committed like any pending step

    def update_step(self, step: int) -> None:
        """update_step(s): s is the current step; every step below it is closed."""
        self.current = step
        self.frontier = max(self.frontier, step)

    def enter_scope(self, step: int) -> None:
        """Entering the outermost scope of a step makes it the current step."""
        self.open_scopes[step] += 1
        self.current = step
        self.frontier = max(self.frontier, step)

    def exit_scope(self, step: int) -> None:
        """Leaving the outermost scope of s commits s and every pending step below it.

        While another scope of s is still open (here: an s-t-s nesting), only the steps below s
        are committed; the last scope of s to close commits s.
        """
        self.open_scopes[step] -= 1
        through = step - 1 if self.open_scopes[step] else step
        if self.pending and min(self.pending) <= through:
            self.commit_through(through)

    def flush(self) -> None:
        """flush()/finalize()/finish(): everything pending is committed, open steps too."""
        if self.pending:
            self.commit_through(max(self.pending))
        if self.late_next:  # late="next" data with no later step: an extra row at the last one
            entries, self.late_next = self.late_next, []
            self.commit_row(self.committed, entries)

    # --------------------------------------------------------------- commits

    def entries(self) -> int:
        extra = [row for rows in self.extra_rows.values() for row in rows]
        return sum(len(bucket) for bucket in [*self.pending.values(), *extra])

    def commit_through(self, through: int) -> None:
        for step in sorted(s for s in self.pending if s <= through):
            entries = self.pending.pop(step)
            if self.late_next:
                entries, self.late_next = self.late_next + entries, []
            self.commit_row(step, entries)
            for extra in self.extra_rows.pop(step, []):
                self.extra_rows_committed += 1
                self.commit_row(step, extra)

    def commit_row(self, step: int, entries: list[Entry]) -> None:
        """ONE row per commit; native step = max(logical, last native + 1)."""
        row = merged(entries)
        self.stats["key_conflicts"] += sum(len(data) for _, data in entries) - len(row)
        self.stats["calls_saved"] += len(entries) - 1
        self.stats["wandb_calls"] += 1
        native = max(step, self.last_native + 1)
        if native != step:
            self.stats["step_jumps"] += 1
        self.committed = max(self.committed, step)
        self.last_native = native
        self.rows.append({**row, AXIS: step, "_step": native})


class SharedRuns:
    """Hands out offline runs to examples and reads back the rows each example wrote."""

    def __init__(self, start_run: Any) -> None:
        self.start_run = start_run
        self.run: Any = None
        self.examples_on_run = 0
        self.example = 0

    def acquire(self) -> Any:
        """The run for the next example (a fresh one after a finish or every N examples)."""
        if self.run is not None and self.examples_on_run >= EXAMPLES_PER_RUN:
            self.run.finish()
            self.run = None
        if self.run is None:
            # Not "create_new": `wandb.run` must be this run (for @logs_metrics return values).
            self.run = self.start_run(reinit="finish_previous")
            self.examples_on_run = 0
        self.examples_on_run += 1
        self.example += 1
        return self.run

    def rows_of_example(self, finished: bool) -> list[dict[str, Any]]:
        """The rows this example made wandb write, wandb's bookkeeping keys removed."""
        run, example = self.run, self.example
        sync_file = run.settings.sync_file
        if finished:
            rows = read_history(sync_file)
            end = len(rows)
            self.run = None
        else:
            # Row A, then row B whose records (summary, then history: 3 x 33 KB) fill the block
            # that holds row A, so wandb-core writes row A out.
            run.log({"barrier": example, "barrier_pad": BARRIER_PAD})
            run.log({"barrier_end": example, "barrier_pad": BARRIER_PAD})
            deadline = time.monotonic() + BARRIER_TIMEOUT
            while True:
                rows = read_history(sync_file, wait_for_exit=False)
                end = _index(rows, example)
                if end is not None:
                    break
                if time.monotonic() > deadline:  # finishing always writes the file out
                    run.finish()
                    rows = read_history(sync_file)
                    end = _index(rows, example)
                    self.run = None
                    break
                time.sleep(0.002)
            assert end is not None, "the barrier row never reached the run file"
        start = _index(rows, example - 1)
        start = 0 if start is None else start + 2  # after the previous example's rows A and B
        return [{k: v for k, v in row.items() if k not in NON_USER_KEYS} for row in rows[start:end]]


def _index(rows: list[dict[str, Any]], barrier: int) -> int | None:
    for index in range(len(rows) - 1, -1, -1):
        if rows[index].get("barrier") == barrier:
            return index
    return None


class StepSyncMachine(RuleBasedStateMachine):
    """Drives one StepManager on a real run and a Model side by side."""

    def __init__(self, runs: SharedRuns) -> None:
        super().__init__()
        self.runs = runs
        self.scopes: list[tuple[int, bool, Any]] = []  # (step, outermost, context manager)
        self.value = 0

    def fresh(self) -> int:
        """A value never logged before, so each one can be traced to its row."""
        self.value += 1
        return self.value

    def data(self, keys: list[str]) -> dict[str, int]:
        return {key: self.fresh() for key in keys}

    def step(self, relative: int) -> int:
        return self.base + relative

    @initialize(late=late_policies, buffer_size=st.integers(1, 12), may_finish=st.integers(0, 15))
    def start(self, late: str, buffer_size: int, may_finish: int) -> None:
        self.run = self.runs.acquire()
        self.base = int(self.run.step)
        self.manager = StepManager(self.run, buffer_size=buffer_size, flush_interval=0, late=late)
        self.model = Model(self.base, late, buffer_size)
        self.may_finish = may_finish == 0

    def active(self) -> int | None:
        return self.scopes[-1][0] if self.scopes else None

    def expect(self, outcome: str, call: Any) -> None:
        if outcome == "late":
            with pytest.raises(LateStepError):
                call()
        elif outcome == "finished":
            with pytest.raises(UsageError):
                call()
        else:
            call()

    @rule(
        keys=st.lists(metric_keys, min_size=1, max_size=3, unique=True),
        step=st.none() | steps(),
        commit=commits,
        priority=priorities,
        source=sources,
    )
    def log(self, keys: list[str], step: int | None, commit: Any, priority: int, source: str):
        data = self.data(keys)
        absolute = None if step is None else self.step(step)
        outcome = self.model.log(data, absolute, commit, priority, self.active())
        self.expect(
            outcome,
            lambda: self.manager.log(
                data, absolute, commit=commit, source=source, priority=priority
            ),
        )

    @rule(
        inner=st.lists(metric_keys, max_size=2, unique=True),
        returned=st.none() | st.lists(metric_keys, max_size=2, unique=True),
        priority=priorities,
    )
    def log_from_producer(self, inner: list[str], returned: list[str] | None, priority: int):
        """A @logs_metrics function logs through the manager and returns a mapping (or None)."""
        inner_data = self.data(inner)
        returned_data = None if returned is None else self.data(returned)
        manager = self.manager

        @logs_metrics(f"producer{priority}", priority)
        def produce() -> dict[str, int] | None:
            if inner_data:
                manager.log(inner_data)  # source and priority come from the decorator
            return returned_data

        # The inner call first; the returned mapping is logged only if the inner call returned.
        outcome = "ok"
        if inner_data:
            outcome = self.model.log(inner_data, None, None, priority, self.active())
        if outcome == "ok" and returned_data is not None and not self.model.finished:
            outcome = self.model.log(returned_data, None, None, priority, self.active())
        # After finish, a returned mapping finds no wandb.run: warned about, not raised.
        self.expect(outcome, produce)

    @precondition(lambda self: len(self.scopes) < 3)
    @rule(step=steps())
    def open_scope(self, step: int) -> None:
        absolute = self.step(step)
        outermost = self.active() != absolute
        scope = step_scope(absolute)
        scope.__enter__()
        self.scopes.append((absolute, outermost, scope))
        if outermost:
            self.model.enter_scope(absolute)

    @precondition(lambda self: bool(self.scopes))
    @rule()
    def close_scope(self) -> None:
        absolute, outermost, scope = self.scopes.pop()
        scope.__exit__(None, None, None)
        if outermost:
            self.model.exit_scope(absolute)

    @rule(step=steps())
    def update_step(self, step: int) -> None:
        self.manager.update_step(self.step(step), source="loop")
        self.model.update_step(self.step(step))

    @rule()
    def flush(self) -> None:
        self.manager.flush()
        if not self.model.finished:
            self.model.flush()

    @precondition(lambda self: self.may_finish and not self.model.finished)
    @rule()
    def finish(self) -> None:
        self.run.finish()
        self.model.flush()
        self.model.finished = True

    @invariant()
    def pending_matches_model(self) -> None:
        if not hasattr(self, "model"):
            return
        stats = self.manager.get_stats()
        assert stats["pending_entries"] == self.model.entries() + len(self.model.late_next)
        assert stats["wandb_calls"] == self.model.stats["wandb_calls"]

    def teardown(self) -> None:
        if not hasattr(self, "model"):
            return
        while self.scopes:
            self.close_scope()
        if not self.model.finished:
            self.manager.finalize()
            self.model.flush()
        stats = self.manager.get_stats()
        self.manager.finalize()
        # The next example gets a fresh manager on the same run.
        del self.run.__dict__[ATTR]
        rows = self.runs.rows_of_example(self.model.finished)
        check_rows(rows, self.model)
        for name in (
            "total_logs",
            "late_logs",
            "dropped_logs",
            "step_conflicts",
            "key_conflicts",
            "wandb_calls",
            "calls_saved",
            "step_jumps",
        ):
            assert stats[name] == self.model.stats[name], name
        assert stats["failed_flushes"] == 0
        assert stats["pending_steps"] == stats["pending_entries"] == 0


def check_rows(rows: list[dict[str, Any]], model: Model) -> None:
    """The file holds exactly the predicted rows: each value once, at its step, winners kept."""
    natives = [row["_step"] for row in rows]
    assert natives == sorted(set(natives)), f"native steps not strictly increasing: {natives}"
    written = Counter(v for row in rows for k, v in row.items() if k not in (AXIS, "_step"))
    assert all(count == 1 for count in written.values()), f"values written twice: {written}"
    expected = Counter(v for row in model.rows for k, v in row.items() if k not in (AXIS, "_step"))
    assert written == expected, (
        f"missing: {sorted(expected - written)}, unexpected: {sorted(written - expected)}"
    )
    assert rows == model.rows
    if model.stats["late_logs"] == 0 and model.extra_rows_committed == 0:
        assert all(row["_step"] == row[AXIS] for row in rows)


class TestStatefulExactlyOnce:
    def test_every_value_lands_once_where_the_model_predicts(self, offline_run):
        """Generated programs of scopes, steps, producers, flushes and late data: rows == model."""
        assert not stepsync.is_patched()
        runs = SharedRuns(offline_run)
        run_state_machine_as_test(lambda: StepSyncMachine(runs))
