"""The core contract of docs/design.md, rule by rule, on real offline runs read back from disk."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import wandb
from _wandb_helpers import AXIS, QUIET, rows, summary_of, wait_until
from hypothesis import given
from strategies import entries

import stepsync
from stepsync import (
    LateStepError,
    StepManager,
    get_manager,
    logs_metrics,
    propagate,
    step_scope,
)
from stepsync._merge import merge


class TestStepResolution:
    def test_scope_wins_over_an_explicit_step(self, offline_run):
        """Rule 1: inside step_scope(s) an explicit other step is a conflict and s wins."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        with step_scope(3):
            manager.log({"a": 1}, step=7)
            manager.log({"b": 2}, step=3)
        assert manager.get_stats()["step_conflicts"] == 1
        assert rows(run) == [{"a": 1, "b": 2, AXIS: 3, "_step": 3}]

    def test_explicit_step_outside_scopes(self, offline_run):
        """Rule 2: outside scopes an explicit step is the logical step, in any order."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        manager.log({"a": 1}, step=4)
        manager.log({"b": 2}, step=2)
        manager.flush()
        assert rows(run) == [{"b": 2, AXIS: 2, "_step": 2}, {"a": 1, AXIS: 4, "_step": 4}]

    def test_stepless_call_goes_to_the_current_step(self, offline_run):
        """Rule 3: update_step(s) makes s the step of step-less calls outside scopes."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        manager.update_step(5)
        manager.log({"a": 1})
        manager.log({"b": 2}, commit=True)  # commit does not split the current step
        assert manager.current_step == 5
        manager.flush()
        assert rows(run) == [{"a": 1, "b": 2, AXIS: 5, "_step": 5}]

    def test_stepless_call_after_a_scope_is_late_for_that_scope(self, offline_run):
        """Rule 3: after step_scope(s) closed, a step-less call goes to s, as a late row."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        with step_scope(2):
            manager.log({"a": 1})
        manager.log({"b": 2})
        manager.flush()
        assert manager.get_stats()["late_logs"] == 1
        assert rows(run) == [{"a": 1, AXIS: 2, "_step": 2}, {"b": 2, AXIS: 2, "_step": 3}]

    def test_no_step_no_scope_behaves_like_plain_wandb(self, offline_run):
        """Rule 4: with nothing set, log / commit=False / commit=True make plain wandb's rows."""
        calls: list[tuple[dict[str, int], bool | None]] = [
            ({"a": 1}, None),
            ({"b": 2}, False),
            ({"c": 3}, None),
            ({"d": 4}, False),
            ({"e": 5}, True),
            ({"f": 6}, None),
        ]
        native = offline_run()
        for data, commit in calls:
            native.log(data, commit=commit)
        expected = [{k: v for k, v in row.items() if k != "_step"} for row in rows(native)]
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        for data, commit in calls:
            manager.log(data, commit=commit)
        got = rows(run)
        assert [{k: v for k, v in r.items() if k not in (AXIS, "_step")} for r in got] == expected
        assert [(r[AXIS], r["_step"]) for r in got] == [(0, 0), (1, 1), (2, 2), (3, 3)]

    def test_stepless_call_joins_the_highest_open_step(self, offline_run):
        """Rule 4: a step-less call goes to the highest step still open and closes it."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        manager.log({"a": 1}, step=1)
        manager.log({"b": 2}, step=3)
        manager.log({"c": 3})  # joins step 3 and commits 1 and 3
        assert manager.get_stats()["pending_steps"] == 0
        assert rows(run) == [{"a": 1, AXIS: 1, "_step": 1}, {"b": 2, "c": 3, AXIS: 3, "_step": 3}]


class TestCommits:
    def test_one_row_per_step_in_ascending_order(self, offline_run):
        """Pending steps commit in ascending logical order, one merged Run.log call each."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        for step in (5, 3, 4, 3, 5):
            manager.log({f"k{step}_{manager.get_stats()['total_logs']}": step}, step=step)
        manager.flush()
        stats = manager.get_stats()
        assert (stats["wandb_calls"], stats["calls_saved"]) == (3, 2)
        assert [(r[AXIS], r["_step"], len(r)) for r in rows(run)] == [
            (3, 3, 4),
            (4, 4, 3),
            (5, 5, 4),
        ]

    def test_nested_summaries_follow_the_newest_step_after_the_axis_switch(self, offline_run):
        """Once late data puts keys on stepsync's axis, nested keys still reach the summary at
        their newest step (wandb < 0.18 stops writing them once any metric is defined)."""
        stepsync.patch()
        run = offline_run()
        run.log({"train": {"loss": 1.0}})
        run.log({"train": {"loss": 2.0}})
        run.log({"x": 0}, step=0)  # late: the switch to the axis
        run.log({"train": {"loss": 3.0}, "note": "a", "val": {"acc": 0.5}})  # `val` is new
        summary = summary_of(run)
        assert (summary["train"], summary["val"], summary["note"]) == (
            {"loss": 3.0},
            {"acc": 0.5},
            "a",
        )

    def test_the_first_late_row_keeps_the_nested_summary_it_does_not_write(self, offline_run):
        """The first late row, the one that puts keys on the axis, writes an empty ``train``:
        ``train.loss`` keeps its summary (wandb < 0.18 replaced nested dicts whole in the
        summary until a metric was defined: the axis is declared before that row)."""
        stepsync.patch()
        run = offline_run()
        run.log({"loss": 0, "train": {"loss": 1.5}})
        run.log({"loss": 1})
        run.log({"train": {}, "loss": 2}, step=0)  # late
        summary = summary_of(run)
        assert (summary["train"], summary["loss"]) == ({"loss": 1.5}, 1)

    @pytest.mark.parametrize("step", [None, 1], ids=["newer-step", "late-at-its-newest-step"])
    def test_a_value_repeated_after_a_summary_write_back_reaches_the_summary(
        self, offline_run, step
    ):
        """A late row's value, written back over at a summary read, then logged again at a newer
        step, or late at the key's newest step (the later write there wins): that is the
        summary (wandb < 0.18 skips a value equal to the key's previous row)."""
        stepsync.patch()
        run = offline_run()
        run.define_metric("loss", summary="min")  # a definition: wandb < 0.18 checks for repeats
        run.log({"acc": 1})
        run.log({"acc": 2})
        run.log({"acc": 5}, step=0)  # late
        assert run.summary["acc"] == 2  # the newest step's value, written back at the read
        run.log({"acc": 5}, step=step)
        assert summary_of(run)["acc"] == 5

    def test_a_closed_step_keeps_its_first_value_of_a_key(self, offline_run):
        """Plain wandb wrote step 3 when step 4 came, so a second loss for step 3 must not
        replace the first: it lands as an extra row of step 3; a new key still merges."""
        native = offline_run()
        for step, loss in ((3, 3.0), (4, 4.0), (3, 100.0)):
            native.log({"loss": loss}, step=step)
        stepsync.patch()
        run = offline_run()
        run.log({"loss": 3.0}, step=3)
        run.log({"loss": 4.0}, step=4)
        run.log({"acc": 0.5}, step=3)  # no collision: merges into the row of step 3
        run.log({"loss": 100.0}, step=3)
        get_manager(run).flush()
        assert run.summary["loss"] == 4.0  # the newest step's value, not the extra row's
        got = rows(run)
        assert [(r[AXIS], r["loss"], r.get("acc")) for r in got] == [
            (3, 3.0, 0.5),
            (3, 100.0, None),
            (4, 4.0, None),
        ]
        assert [(r["_step"], r["loss"]) for r in rows(native)] == [(3, 3.0), (4, 4.0)]

    def test_leaving_a_scope_commits_it_and_every_step_below(self, offline_run):
        """Leaving the outermost scope of s commits s and every pending step below it, at once."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        manager.log({"before": 1}, step=1)
        manager.log({"after": 1}, step=9)
        with step_scope(4):
            manager.log({"in": 4})
            with step_scope(4):  # a nested scope of the same step does not commit
                manager.log({"nested": 4})
            assert manager.get_stats()["pending_steps"] == 3
        assert manager.get_stats()["pending_steps"] == 1  # step 9 waits
        manager.flush()
        assert rows(run) == [
            {"before": 1, AXIS: 1, "_step": 1},
            {"in": 4, "nested": 4, AXIS: 4, "_step": 4},
            {"after": 1, AXIS: 9, "_step": 9},
        ]

    def test_scope_commits_even_when_the_block_raises(self, offline_run):
        """What a scope logged before an exception is committed when the exception leaves it."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)

        def train_step() -> None:
            with step_scope(0):
                manager.log({"a": 1})
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            train_step()
        assert manager.get_stats()["pending_steps"] == 0
        assert rows(run) == [{"a": 1, AXIS: 0, "_step": 0}]

    def test_commit_true_inside_a_scope_does_not_split_the_row(self, offline_run):
        """Inside a scope, commit=True from a producer does not split the row: the scope decides."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        with step_scope(0):
            manager.log({"a": 1}, commit=True)
            manager.log({"b": 2}, commit=True)
        assert rows(run) == [{"a": 1, "b": 2, AXIS: 0, "_step": 0}]

    def test_no_late_data_means_native_equals_logical(self, offline_run):
        """With no late data, the native step equals the logical step in every row."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        for step in (0, 2, 3, 7):
            with step_scope(step):
                manager.log({"a": step})
        got = rows(run)
        assert [(r[AXIS], r["_step"]) for r in got] == [(0, 0), (2, 2), (3, 3), (7, 7)]
        assert manager.get_stats()["step_jumps"] == 0

    def test_only_a_jump_names_its_step_to_wandb(self, offline_run, monkeypatch):
        """A row at wandb's next step lets wandb number it (skipping its step checks); a row
        above it passes its step. Both land where they belong."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        original = stepsync._wandb.ORIGINALS["_log"]
        passed: list[int | None] = []

        def spy(run_: Any, data: Any, step: int | None = None, commit: Any = None) -> None:
            passed.append(step)
            original(run_, data, step=step, commit=commit)

        monkeypatch.setitem(stepsync._wandb.ORIGINALS, "_log", spy)
        for step in (0, 1, 5, 6):
            with step_scope(step):
                manager.log({"a": step})
        assert passed == [None, None, 5, None]
        assert [(r[AXIS], r["_step"]) for r in rows(run)] == [(0, 0), (1, 1), (5, 5), (6, 6)]

    def test_native_step_is_max_of_logical_and_last_plus_one(self, offline_run):
        """A late row takes the next native step; later rows keep native = max(logical, last+1)."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        for step in range(3):
            with step_scope(step):
                manager.log({"a": step})
        manager.log({"late": 1}, step=1)
        manager.flush()  # native 3
        with step_scope(3):
            manager.log({"a": 3})  # native 4: 3 is taken
        with step_scope(10):
            manager.log({"a": 10})  # native 10
        got = rows(run)
        assert [(r[AXIS], r["_step"]) for r in got] == [
            (0, 0),
            (1, 1),
            (2, 2),
            (1, 3),
            (3, 4),
            (10, 10),
        ]
        assert manager.get_stats()["step_jumps"] == 2

    def test_native_counter_starts_from_run_step(self, offline_run):
        """A manager on a run with rows starts after them; replayed steps land as late rows."""
        run = offline_run()
        for step in range(3):
            run.log({"native": step})
        manager = StepManager(run, flush_interval=QUIET)
        with step_scope(1):  # a resumed job replaying step 1
            manager.log({"replayed": 1})
        with step_scope(5):
            manager.log({"new": 5})
        got = rows(run)
        assert [(r.get(AXIS), r["_step"]) for r in got] == [
            (None, 0),
            (None, 1),
            (None, 2),
            (1, 3),
            (5, 5),
        ]
        assert manager.get_stats()["late_logs"] == 1

    def test_native_rows_logged_beside_the_manager_are_respected(self, offline_run):
        """Rows logged natively beside a manager push its native step past them: none dropped."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        manager.log({"a": 0}, step=0)  # pending in the manager
        run.log({"native": 1})  # wandb rows 0 and 1, written around stepsync
        run.log({"native": 2})
        manager.flush()
        got = rows(run)
        assert [(r.get(AXIS), r["_step"]) for r in got] == [(None, 0), (None, 1), (0, 2)]
        assert got[-1]["a"] == 0

    def test_callback_one_step_behind_merges_with_no_late_row(self, offline_run):
        """Explicit-step data outside scopes waits in the buffer, so a lagging callback merges."""
        run = offline_run()
        manager = StepManager(run, buffer_size=3, flush_interval=QUIET)
        for step in range(5):
            manager.update_step(step)
            manager.log({"train/loss": step})
            if step:
                manager.log({"cb/metric": step - 1}, step=step - 1)
        manager.finalize()
        got = rows(run)
        assert manager.get_stats()["late_logs"] == 0
        assert [r[AXIS] for r in got] == [0, 1, 2, 3, 4]
        assert all(r["cb/metric"] == r[AXIS] for r in got[:4])
        assert all(r["_step"] == r[AXIS] for r in got)


class TestBufferAndBackgroundFlush:
    def test_closed_step_commits_after_flush_interval(self, offline_run):
        """A closed idle step is committed by the background flusher; the open step waits."""
        run = offline_run()
        manager = StepManager(run, flush_interval=0.05)
        manager.log({"a": 0}, step=0)
        manager.update_step(1)  # closes step 0
        manager.log({"b": 1})  # step 1 is open
        wait_until(lambda: manager.get_stats()["wandb_calls"] == 1)
        stats = manager.get_stats()
        assert (stats["pending_steps"], stats["pending_entries"]) == (1, 1)
        manager.flush()
        assert rows(run) == [{"a": 0, AXIS: 0, "_step": 0}, {"b": 1, AXIS: 1, "_step": 1}]

    def test_overflow_commits_the_lowest_closed_steps(self, offline_run):
        """More than buffer_size pending entries: the lowest closed steps are committed at once."""
        run = offline_run()
        manager = StepManager(run, buffer_size=3, flush_interval=QUIET)
        manager.update_step(10)
        for step in range(3):
            manager.log({"a": step}, step=step)
        assert manager.get_stats()["wandb_calls"] == 0
        manager.log({"a": 3}, step=3)  # 4 entries > 3: step 0 goes
        stats = manager.get_stats()
        assert (stats["wandb_calls"], stats["pending_entries"]) == (1, 3)
        manager.flush()
        assert [r[AXIS] for r in rows(run)] == [0, 1, 2, 3]

    def test_any_scope_entered_closes_the_steps_below_it(self, offline_run):
        """A step below a scope entered earlier is closed, even when a lower scope came since
        (an evaluation of an older step inside training): overflow commits it."""
        run = offline_run()
        manager = StepManager(run, buffer_size=1, flush_interval=QUIET)
        with step_scope(5), step_scope(3):

            def callback() -> None:  # a thread outside any scope, logging with its own step
                manager.log({"cb": 1}, step=4)
                manager.log({"cb2": 2}, step=4)  # 2 entries > 1: step 4, below 5, goes

            worker = threading.Thread(target=callback)
            worker.start()
            worker.join()
            assert manager.get_stats()["pending_steps"] == 0
        assert [(r[AXIS], r.get("cb")) for r in rows(run)] == [(4, 1)]

    def test_open_step_is_never_split_by_overflow(self, offline_run):
        """Entries of the open (highest) step stay together past buffer_size: one row."""
        run = offline_run()
        manager = StepManager(run, buffer_size=2, flush_interval=QUIET)
        manager.update_step(0)
        for i in range(5):
            manager.log({f"k{i}": i})
        assert manager.get_stats()["wandb_calls"] == 0
        manager.flush()
        assert rows(run) == [{**{f"k{i}": i for i in range(5)}, AXIS: 0, "_step": 0}]

    def test_flush_commits_open_steps(self, offline_run):
        """flush() commits every pending step now, the open ones included."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        manager.update_step(2)
        manager.log({"a": 1})
        manager.log({"b": 1}, step=6)
        manager.flush()
        assert manager.get_stats()["pending_steps"] == 0
        assert [r[AXIS] for r in rows(run)] == [2, 6]

    def test_run_finish_flushes_the_manager(self, offline_run):
        """run.finish() commits what is pending first, with no explicit flush."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        manager.log({"a": 1}, step=0)
        manager.update_step(1)
        manager.log({"b": 2})
        run.finish()
        assert manager.get_stats()["pending_steps"] == 0
        assert rows(run) == [{"a": 1, AXIS: 0, "_step": 0}, {"b": 2, AXIS: 1, "_step": 1}]


class TestMerging:
    def test_lowest_priority_number_wins_a_key(self, offline_run):
        """Within a step, the value of the lowest priority number wins; collisions are counted."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        with step_scope(0):
            manager.log({"loss": "debug"}, source="debug", priority=10)
            manager.log({"loss": "trainer", "lr": 1}, source="trainer", priority=0)
            manager.log({"loss": "eval"}, source="eval", priority=1)
        assert manager.get_stats()["key_conflicts"] == 2
        assert rows(run) == [{"loss": "trainer", "lr": 1, AXIS: 0, "_step": 0}]

    def test_equal_priority_later_write_wins(self, offline_run):
        """At equal priority the later write wins."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        with step_scope(0):
            manager.log({"loss": 1, "a": 1})
            manager.log({"loss": 2})
        assert rows(run) == [{"loss": 2, "a": 1, AXIS: 0, "_step": 0}]

    @given(entries)
    def test_merge_keeps_the_documented_winner(self, entries):
        """merge(): per key, lowest priority number, then last write; collisions counted."""
        merged, collisions = merge([(p, dict(d)) for p, d in entries])
        expected: dict[str, Any] = {}
        best: dict[str, int] = {}
        for priority, data in entries:
            for key, value in data.items():
                if key not in best or priority <= best[key]:
                    expected[key], best[key] = value, priority
        assert merged == expected
        assert collisions == sum(len(d) for _, d in entries) - len(expected)

    @pytest.mark.parametrize("merges", [True, False])
    def test_nested_dicts_merge_as_the_installed_wandb_does(self, merges):
        """wandb >= 0.18 merges nested dicts of one step leaf by leaf; before, the later dict
        replaces the earlier one whole (``_wandb.MERGES_NESTED_DICTS``, which a row's merge is
        given as ``deep``): merge() does the same."""
        entries = [(5, {"n": {"x": 1}, "a": 1}), (5, {"n": {"y": 2}})]
        merged, collisions = merge(entries, merges)
        if merges:
            assert (merged, collisions) == ({"n": {"x": 1, "y": 2}, "a": 1}, 0)
        else:
            assert (merged, collisions) == ({"n": {"y": 2}, "a": 1}, 1)


class TestLatePolicies:
    def committed_steps(self, manager: StepManager, through: int) -> None:
        for step in range(through + 1):
            with step_scope(step):
                manager.log({"a": step})

    def test_axis_lands_as_an_extra_row_at_its_true_step(self, offline_run):
        """late="axis": a late value is an extra row whose axis key is its true step."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET, late="axis")
        self.committed_steps(manager, 2)
        manager.log({"eval/acc": 0.5}, step=1)
        manager.flush()
        assert rows(run)[-1] == {"eval/acc": 0.5, AXIS: 1, "_step": 3}
        assert manager.get_stats()["late_logs"] == 1

    def test_next_merges_into_the_next_commit(self, offline_run):
        """late="next": a late value rides on the next committed row; counted as a conflict."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET, late="next")
        self.committed_steps(manager, 1)
        manager.log({"late": 1}, step=0)
        with step_scope(2):
            manager.log({"a": 2})
        manager.log({"late_again": 1}, step=0)
        manager.flush()  # nothing else pending: an extra row at the last step
        stats = manager.get_stats()
        assert (stats["late_logs"], stats["step_conflicts"]) == (2, 2)
        assert rows(run)[2:] == [
            {"late": 1, "a": 2, AXIS: 2, "_step": 2},
            {"late_again": 1, AXIS: 2, "_step": 3},
        ]

    def test_drop_counts_and_warns_once_with_totals(self, offline_run, caplog):
        """late="drop": late values are dropped, counted, and reported in ONE warning."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET, late="drop")
        self.committed_steps(manager, 2)
        with caplog.at_level(logging.WARNING, logger="stepsync"):
            manager.log({"x": 1, "y": 2}, step=0)
            manager.log({"x": 3}, step=2)
            manager.finalize()
        warnings = [
            r for r in caplog.records if r.name == "stepsync" and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 1
        assert "dropped 2" in warnings[0].getMessage()
        assert "0..2" in warnings[0].getMessage()
        assert manager.get_stats()["dropped_logs"] == 2
        assert [r[AXIS] for r in rows(run)] == [0, 1, 2]

    def test_raise_fails_at_the_call_site(self, offline_run):
        """late="raise": LateStepError at the call site; nothing is recorded."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET, late="raise")
        self.committed_steps(manager, 1)
        with pytest.raises(LateStepError) as info:
            manager.log({"late": 1}, step=0)
        assert (info.value.step, info.value.committed_through) == (0, 1)
        manager.flush()
        assert [r[AXIS] for r in rows(run)] == [0, 1]


class TestStatistics:
    def test_stats_have_every_documented_key(self, offline_run):
        """get_stats() has the seed tool's counters (``successful_flushes`` under its new name,
        ``wandb_calls``) and the documented new ones."""
        manager = StepManager(offline_run(), flush_interval=QUIET)
        assert {
            "total_logs",
            "dropped_logs",
            "step_conflicts",
            "late_logs",
            "key_conflicts",
            "step_jumps",
            "failed_flushes",
            "pending_steps",
            "pending_entries",
            "wandb_calls",
            "calls_saved",
        } <= set(manager.get_stats())

    def test_counters_follow_a_known_sequence(self, offline_run):
        """Counters after two steps of three sources: calls, commits and merges add up."""
        manager = StepManager(offline_run(), flush_interval=QUIET)
        for step in range(2):
            with step_scope(step):
                manager.log({"a": 1}, source="trainer", priority=0)
                manager.log({"a": 2}, source="eval", priority=1)
                manager.log({"b": 3}, source="debug", priority=10)
        stats = manager.get_stats()
        assert {k: stats[k] for k in ("total_logs", "wandb_calls")} == {
            "total_logs": 6,
            "wandb_calls": 2,
        }
        assert (stats["calls_saved"], stats["key_conflicts"], stats["failed_flushes"]) == (4, 2, 0)


class TestManagers:
    def test_get_manager_is_one_per_run(self, offline_run):
        """get_manager() returns the same manager for a run, and distinct ones for two runs."""
        first, second = offline_run(), offline_run()
        assert get_manager(first) is get_manager(first)
        assert get_manager(first) is not get_manager(second)

    def test_get_manager_defaults_to_wandb_run(self, offline_run):
        """get_manager() with no argument is the manager of wandb.run."""
        run = offline_run(reinit="finish_previous")
        assert wandb.run is run
        assert get_manager() is get_manager(run)

    def test_configure_sets_defaults_of_implicit_managers(self, offline_run):
        """configure() options reach managers created by get_manager()."""
        stepsync.configure(late="drop", axis_key="train/step", buffer_size=7)
        run = offline_run()
        manager = get_manager(run)
        assert manager.axis_key == "train/step"
        with step_scope(1):
            manager.log({"a": 1})
        manager.log({"late": 1}, step=0)
        assert manager.get_stats()["dropped_logs"] == 1
        assert rows(run) == [{"a": 1, "train/step": 1, "_step": 1}]

    def test_second_manager_for_a_run_is_refused(self, offline_run):
        """A run has one manager: StepManager(run) twice raises ValueError."""
        run = offline_run()
        StepManager(run)
        with pytest.raises(ValueError, match="already has a manager"):
            StepManager(run)


class TestThreadsAndAsyncio:
    def test_propagate_carries_step_and_producer_into_a_thread(self, offline_run):
        """A propagate()d job logs to the caller's step with the caller's source and priority."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)

        @logs_metrics("eval", priority=1)
        def evaluate() -> None:
            with ThreadPoolExecutor(2) as pool:
                pool.submit(propagate(lambda: manager.log({"loss": "eval"}))).result()

        with step_scope(4):
            manager.log({"loss": "default"})  # priority 5 loses to the thread's priority 1
            evaluate()
        assert rows(run) == [{"loss": "eval", AXIS: 4, "_step": 4}]

    def test_propagate_keeps_the_step_after_the_caller_moved_on(self, offline_run):
        """A job bound in step_scope(s) logs to s even when it runs after s was committed."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        with step_scope(0):
            job = propagate(lambda: manager.log({"slow": 1}))
            manager.log({"a": 0})
        with step_scope(1):
            manager.log({"a": 1})
        thread = threading.Thread(target=job)
        thread.start()
        thread.join()
        manager.flush()
        assert rows(run)[-1] == {"slow": 1, AXIS: 0, "_step": 2}

    def test_asyncio_tasks_share_their_scope(self, offline_run):
        """Tasks started under one scope log to its step across awaits: one row."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)

        async def worker(i: int) -> None:
            await asyncio.sleep(0)
            manager.log({f"w{i}": i})
            await asyncio.sleep(0)

        async def main() -> None:
            with step_scope(3):
                await asyncio.gather(*(worker(i) for i in range(5)))

        asyncio.run(main())
        assert rows(run) == [{**{f"w{i}": i for i in range(5)}, AXIS: 3, "_step": 3}]

    def test_asyncio_tasks_in_different_scopes_stay_apart(self, offline_run):
        """Interleaved tasks each in their own scope log to their own step."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        order: list[int] = []

        async def rollout(step: int, gate: asyncio.Event, next_gate: asyncio.Event) -> None:
            with step_scope(step):
                await gate.wait()
                manager.log({"reward": step})
                order.append(step)
                next_gate.set()

        async def main() -> None:
            gates = [asyncio.Event() for _ in range(4)]
            tasks = [rollout(s, gates[s], gates[(s + 1) % 4]) for s in (2, 0, 1)]
            gates[0].set()
            await asyncio.gather(*tasks)

        asyncio.run(main())
        assert order == [0, 1, 2]
        assert [(r["reward"], r[AXIS]) for r in rows(run)] == [(0, 0), (1, 1), (2, 2)]


class TestLogsMetrics:
    def test_sync_function_result_is_logged_and_returned_untouched(self, offline_run):
        """A sync producer's returned mapping is logged to the active step and returned as is."""
        run = offline_run(reinit="finish_previous")
        result = {"eval/acc": 0.5}

        @logs_metrics("eval", priority=1)
        def evaluate(model: str, *, split: str = "val") -> dict[str, float]:
            """Evaluate."""
            return result

        with step_scope(2):
            assert evaluate("m", split="test") is result
        assert rows(run) == [{"eval/acc": 0.5, AXIS: 2, "_step": 2}]

    def test_async_function_result_is_logged(self, offline_run):
        """An async producer's mapping is logged after the await, with its priority."""
        run = offline_run(reinit="finish_previous")

        @logs_metrics("eval", priority=0)
        async def evaluate() -> dict[str, str]:
            await asyncio.sleep(0)
            return {"loss": "eval"}

        async def main() -> None:
            with step_scope(1):
                get_manager().log({"loss": "default"})
                assert await evaluate() == {"loss": "eval"}

        asyncio.run(main())
        assert rows(run) == [{"loss": "eval", AXIS: 1, "_step": 1}]

    def test_methods_are_attributed_and_signature_kept(self, offline_run):
        """Decorated methods keep name, doc and signature; their logs carry the source priority."""
        run = offline_run(reinit="finish_previous")

        class Evaluator:
            @logs_metrics("eval", priority=0)
            def run(self, batch: int, scale: float = 1.0) -> dict[str, float]:
                """Score a batch."""
                get_manager().log({"from_inside": batch})
                return {"loss": batch * scale}

            @logs_metrics("eval", priority=0)
            async def arun(self, batch: int) -> None:
                """Score asynchronously."""

        def plain(self, batch: int, scale: float = 1.0) -> dict[str, float]: ...

        assert inspect.signature(Evaluator.run) == inspect.signature(plain)
        assert Evaluator.run.__name__ == "run"
        assert Evaluator.run.__doc__ == "Score a batch."
        assert inspect.iscoroutinefunction(Evaluator.arun)
        with step_scope(0):
            get_manager().log({"loss": -1.0}, priority=5)
            assert Evaluator().run(3, scale=2.0) == {"loss": 6.0}
        assert rows(run) == [{"loss": 6.0, "from_inside": 3, AXIS: 0, "_step": 0}]

    def test_non_mapping_result_is_not_logged(self, offline_run):
        """A producer returning a non-mapping logs nothing and returns it untouched."""
        run = offline_run(reinit="finish_previous")
        manager = get_manager(run)
        values = [1, 2]

        @logs_metrics("x")
        def produce() -> list[int]:
            return values

        with step_scope(0):
            assert produce() is values
        assert manager.get_stats()["total_logs"] == 0

    def test_bad_source_is_refused_at_decoration(self):
        """logs_metrics needs a non-empty str source and an integer priority >= 0."""
        with pytest.raises(TypeError):
            logs_metrics("")
        with pytest.raises(TypeError):
            logs_metrics(3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="priority"):
            logs_metrics("x", priority=-1)


class TestCompat:
    def test_seed_tool_snippet_runs_as_is(self, offline_run):
        """The wandb_step_fix snippet runs unchanged with stepsync.compat and loses nothing."""
        from stepsync.compat import finalize_wandb_logging, get_step_manager, safe_wandb_log

        run = offline_run(reinit="finish_previous")
        num_steps, eval_interval = 6, 2
        loss, acc, eval_loss = 0.5, 0.9, 0.7
        manager = get_step_manager()
        for step in range(num_steps):
            manager.update_step(step, source="main_loop")
            safe_wandb_log(
                {"train/loss": loss, "train/accuracy": acc}, source="training", priority=0
            )
            if step % eval_interval == 0:
                safe_wandb_log({"eval/loss": eval_loss}, source="evaluation", priority=1)
        finalize_wandb_logging()
        stats = get_step_manager().get_stats()
        assert {"total_logs", "dropped_logs", "step_conflicts", "successful_flushes"} <= set(stats)
        assert (stats["total_logs"], stats["dropped_logs"]) == (9, 0)
        got = rows(run)
        assert [r[AXIS] for r in got] == list(range(num_steps))
        assert [r.get("eval/loss") for r in got] == [0.7, None, 0.7, None, 0.7, None]
        assert all(r["train/loss"] == 0.5 for r in got)

    def test_compat_manager_has_the_old_constructor(self, offline_run):
        """WandBStepManager(buffer_size, flush_interval) is a StepManager of wandb.run."""
        from stepsync.compat import WandBStepManager

        run = offline_run(reinit="finish_previous")
        manager = WandBStepManager(10, 0.5)
        assert isinstance(manager, StepManager)
        assert manager.run is run

    def test_compat_stats_keep_the_old_names(self, offline_run):
        """The old tool's ``successful_flushes`` lives in compat: once it is imported, every
        manager's stats have it, equal to ``wandb_calls``."""
        import stepsync.compat  # noqa: F401

        manager = StepManager(offline_run(), flush_interval=QUIET)
        manager.log({"a": 1}, step=0)
        manager.flush()
        stats = manager.get_stats()
        assert stats["successful_flushes"] == stats["wandb_calls"] == 1
