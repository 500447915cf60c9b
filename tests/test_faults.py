"""Faults: exceptions in scopes, wandb refusing a row, finished/missing runs, SIGTERM, disabled."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import wandb
from _wandb_helpers import AXIS, rows, script_env, wait_until
from wandb.errors import UsageError

import stepsync
from stepsync import NoActiveRunError, StepManager, _manager, get_manager, logs_metrics, step_scope
from stepsync.history import read_history, read_records

TIMEOUT = 90


class Unserializable:
    """A value wandb cannot turn into JSON: its Run.log raises TypeError."""


class TestExceptionsInScopes:
    def test_exception_in_a_scope_keeps_what_was_logged_and_training_goes_on(self, offline_run):
        """An exception leaving a scope commits its step; later steps are unaffected."""
        stepsync.patch()
        run = offline_run(reinit="finish_previous")
        for step in range(4):
            try:
                with step_scope(step):
                    wandb.log({"loss": step})
                    if step == 1:
                        raise ValueError("bad batch")
                    wandb.log({"acc": step})
            except ValueError:
                pass
        assert rows(run) == [
            {"loss": 0, "acc": 0, AXIS: 0, "_step": 0},
            {"loss": 1, AXIS: 1, "_step": 1},
            {"loss": 2, "acc": 2, AXIS: 2, "_step": 2},
            {"loss": 3, "acc": 3, AXIS: 3, "_step": 3},
        ]

    def test_keyboard_interrupt_propagates_and_the_step_is_kept(self, offline_run):
        """Ctrl-C inside a scope propagates unchanged; the step's data is committed on the way."""
        stepsync.patch()
        run = offline_run(reinit="finish_previous")
        interrupt = KeyboardInterrupt()

        def train() -> None:
            for step in range(10):
                with step_scope(step):
                    wandb.log({"loss": step})
                    if step == 2:
                        raise interrupt

        with pytest.raises(KeyboardInterrupt) as info:
            train()
        assert info.value is interrupt
        assert get_manager(run).get_stats()["pending_steps"] == 0
        assert [r["loss"] for r in rows(run)] == [0, 1, 2]


@pytest.fixture
def capture_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let values through uncaptured, so a value wandb refuses reaches the commit (as one that
    fails only there would)."""
    monkeypatch.setattr(_manager, "capture", lambda data: (dict(data), True))


class TestWandbRefusesAValue:
    def test_unserializable_value_raises_wandbs_type_error_at_the_call(self, offline_run):
        """As natively: wandb's own TypeError at the call, the call leaves no trace, and every
        other value of the step lands."""
        native = offline_run()
        with pytest.raises(TypeError) as native_error:
            native.log({"bad": Unserializable(), "ok": 1})
        native.log({"ok": 2})
        stepsync.patch()
        run = offline_run()
        with step_scope(0):
            run.log({"loss": 0})
            with pytest.raises(TypeError) as error:
                run.log({"bad": Unserializable(), "ok": 1})
            run.log({"ok": 2})
        assert str(error.value) == str(native_error.value)
        assert get_manager(run).get_stats()["total_logs"] == 2
        assert rows(run) == [{"loss": 0, "ok": 2, AXIS: 0, "_step": 0}]
        assert [r["ok"] for r in rows(native)] == [2]

    def test_a_value_refused_at_commit_costs_only_its_key(self, offline_run, caplog, capture_off):
        """A value wandb refuses only at commit: ERROR naming the key and step, counted in
        failed_values, and the rest of its row and every other row land."""
        stepsync.patch()
        run = offline_run(reinit="finish_previous")
        with caplog.at_level(logging.ERROR, logger="stepsync"):
            for step in range(3):
                with step_scope(step):
                    wandb.log({"loss": step})
                    if step == 1:
                        wandb.log({"bad": Unserializable(), "acc": 0.5})
        stats = get_manager(run).get_stats()
        assert (stats["failed_values"], stats["failed_flushes"], stats["wandb_calls"]) == (1, 0, 3)
        (error,) = [r for r in caplog.records if r.name.startswith("stepsync")]
        assert "'bad'" in error.getMessage()
        assert "step 1" in error.getMessage()
        got = rows(run)
        assert [(r["loss"], r.get("acc"), r[AXIS]) for r in got] == [
            (0, None, 0),
            (1, 0.5, 1),
            (2, None, 2),
        ]

    def test_a_row_refused_whole_is_logged_counted_and_other_rows_land(
        self, offline_run, caplog, capture_off
    ):
        """A row with nothing wandb accepts: ERROR with step and keys, failed_flushes, and the
        other rows land in order."""
        stepsync.patch()
        run = offline_run(reinit="finish_previous")
        with caplog.at_level(logging.ERROR, logger="stepsync"):
            for step in range(3):
                with step_scope(step):
                    wandb.log({"bad": Unserializable()} if step == 1 else {"loss": step})
        stats = get_manager(run).get_stats()
        assert (stats["failed_flushes"], stats["wandb_calls"]) == (1, 2)
        (error,) = [r for r in caplog.records if r.name.startswith("stepsync")]
        assert "step 1" in error.getMessage()
        assert "'bad'" in error.getMessage()
        got = rows(run)
        assert [(r["loss"], r[AXIS]) for r in got] == [(0, 0), (2, 2)]
        assert [r["_step"] for r in got] == sorted({r["_step"] for r in got})

    def test_background_flusher_survives_a_failed_commit(self, offline_run, capture_off):
        """A row wandb refuses in the background flusher does not stop later commits."""
        run = offline_run()
        manager = StepManager(run, flush_interval=0.02)
        manager.log({"bad": Unserializable()}, step=0)
        manager.update_step(1)
        wait_until(lambda: manager.get_stats()["failed_flushes"] == 1)
        manager.log({"good": 1})
        manager.update_step(2)
        wait_until(lambda: manager.get_stats()["wandb_calls"] == 1)
        assert rows(run) == [{"good": 1, AXIS: 1, "_step": 1}]


class TestFinishedOrMissingRun:
    def test_logging_after_finish_raises_usage_error_like_wandb(self, offline_run):
        """After run.finish(), logging raises wandb's UsageError, patched or through the manager."""
        native = offline_run()
        native.finish()
        with pytest.raises(UsageError):
            native.log({"a": 1})
        stepsync.patch()
        run = offline_run()
        manager = get_manager(run)
        run.finish()
        with pytest.raises(UsageError, match="finished"):
            run.log({"a": 1})
        with pytest.raises(UsageError, match="finished"):
            manager.log({"a": 1}, step=3)
        manager.update_step(4)  # harmless
        manager.flush()
        assert manager.get_stats()["total_logs"] == 0

    def test_finish_inside_a_scope_keeps_the_data_and_the_exit_is_quiet(self, offline_run):
        """run.finish() inside a scope commits its data; leaving the scope afterwards is a no-op."""
        stepsync.patch()
        run = offline_run(reinit="finish_previous")
        with step_scope(3):
            wandb.log({"a": 1})
            run.finish()
        assert rows(run) == [{"a": 1, AXIS: 3, "_step": 3}]

    def test_no_run_gives_clear_errors_and_no_crash(self, caplog):
        """With no run: get_manager() raises NoActiveRunError; scopes and producers still work."""
        assert wandb.run is None
        with pytest.raises(NoActiveRunError, match=r"wandb\.init"):
            get_manager()
        with pytest.raises(NoActiveRunError):
            StepManager()

        @logs_metrics("eval")
        def evaluate() -> dict[str, int]:
            return {"acc": 1}

        stepsync.patch()
        with caplog.at_level(logging.WARNING, logger="stepsync"), step_scope(0):
            assert evaluate() == {"acc": 1}
            assert evaluate() == {"acc": 1}
        # The patch changes nothing about wandb's own error for wandb.log before wandb.init.
        with pytest.raises(wandb.Error, match=r"wandb\.init"):
            wandb.log({"a": 1})
        assert len([r for r in caplog.records if "no wandb run" in r.getMessage()]) <= 1

    def test_compat_log_with_no_run_warns_once(self, caplog):
        """compat.safe_wandb_log with no run warns once and does not raise, like the seed tool."""
        from stepsync import compat

        with caplog.at_level(logging.WARNING, logger="stepsync"):
            compat.safe_wandb_log({"a": 1}, step=0)
            compat.update_training_step(1)
            compat.safe_wandb_log({"a": 2})
            compat.finalize_wandb_logging()
        assert len([r for r in caplog.records if r.name.startswith("stepsync")]) == 1


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import wandb, stepsync

    directory, mode = sys.argv[1], sys.argv[2]
    if mode == "handled":  # what a framework or a careful user installs: exit cleanly
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    handler_before = signal.getsignal(signal.SIGTERM)
    stepsync.patch()
    run = wandb.init(mode="offline", dir=directory, project="sigterm")
    for step in range(20):
        with stepsync.step_scope(step):
            wandb.log({"train/loss": step})
    stepsync.get_manager().update_step(25)
    wandb.log({"eval/late": 19}, step=19)  # late: an extra row, still pending
    wandb.log({"cb/closed": 22}, step=22)  # closed step waiting in the buffer
    wandb.log({"train/open": 25})  # the open current step
    print(json.dumps({
        "sync_file": run.settings.sync_file,
        "handler_kept": signal.getsignal(signal.SIGTERM) is handler_before,
        "pending": stepsync.get_manager().get_stats()["pending_entries"],
    }), flush=True)
    time.sleep(60)  # mid-training: the parent sends SIGTERM now
    """
)


def run_until_sigterm(tmp_path: Path, mode: str) -> tuple[int, dict[str, Any]]:
    """Start the training script, SIGTERM it once its data is pending, return (rc, report)."""
    script = tmp_path / "sigterm_training.py"
    script.write_text(SIGTERM_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=script_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:  # the script died before its data was pending
            proc.wait(TIMEOUT)
            pytest.fail(
                f"training script exited early: {proc.stderr.read() if proc.stderr else ''}"
            )
        report = json.loads(line)
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    return returncode, report


class TestSigterm:
    EXPECTED = [(step, "train/loss") for step in range(20)] + [
        (19, "eval/late"),
        (22, "cb/closed"),
        (25, "train/open"),
    ]

    def test_sigterm_handled_as_exit_commits_everything_pending(self, tmp_path: Path):
        """SIGTERM turned into SystemExit: pending values land before wandb closes the run."""
        returncode, report = run_until_sigterm(tmp_path, "handled")
        assert returncode == 128 + signal.SIGTERM
        assert report["handler_kept"]
        assert report["pending"] == 3
        records = read_records(report["sync_file"])
        assert any(r.HasField("exit") for r in records)
        got = [
            (row[AXIS], key)
            for row in read_history(report["sync_file"])
            for key in row
            if key.split("/")[0] in ("train", "eval", "cb")
        ]
        assert got == self.EXPECTED

    def test_default_sigterm_is_left_to_python_as_wandb_does(self, tmp_path: Path):
        """With no handler stepsync adds none (like wandb): the process dies by SIGTERM, no hang."""
        returncode, report = run_until_sigterm(tmp_path, "default")
        assert returncode == -signal.SIGTERM
        assert report["handler_kept"]
        # wandb itself loses what wandb-core had not written; whatever is there is not duplicated.
        got = [
            (row[AXIS], key)
            for row in read_history(report["sync_file"], timeout=0.5)
            for key in row
            if key.split("/")[0] in ("train", "eval", "cb")
        ]
        assert got == self.EXPECTED[: len(got)]


class TestDisabledMode:
    def test_disabled_run_makes_everything_a_cheap_noop(self, tmp_path: Path, caplog):
        """wandb.init(mode="disabled"): every stepsync path is a quiet, cheap no-op."""
        stepsync.patch()
        run = wandb.init(mode="disabled", dir=tmp_path)

        @logs_metrics("eval", priority=1)
        def evaluate(step: int) -> dict[str, int]:
            return {"eval/acc": step}

        iterations = 2_000
        with caplog.at_level(logging.WARNING, logger="stepsync"):
            start = time.perf_counter()
            for step in range(iterations):
                with step_scope(step):
                    wandb.log({"loss": step})
                    run.log({"lr": 0.1}, step=step)
                    run._log({"grad": 1}, commit=False)  # wandb.watch's direct path
                    get_manager().log({"x": 1}, step=step - 1 if step else 0)
                    evaluate(step)
            elapsed = time.perf_counter() - start
            manager = get_manager(run)
            manager.update_step(iterations)
            manager.flush()
            manager.finalize()
            run.finish()
        stats = manager.get_stats()
        assert (stats["failed_flushes"], stats["wandb_calls"], stats["pending_entries"]) == (
            0,
            0,
            0,
        )
        assert [r.getMessage() for r in caplog.records if r.name.startswith("stepsync")] == []
        assert elapsed / iterations < 0.5e-3  # five calls and a scope: well under a millisecond
        with pytest.raises(TypeError):
            manager.log(["not", "a", "mapping"])  # type: ignore[arg-type]
