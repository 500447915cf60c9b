"""The in-process patch: routing of Run.log and Run._log, identity on unpatch, user axes kept."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import pytest
import wandb
from _wandb_helpers import declared_metrics, derived_from_glob, records_of, rows_of, user_rows
from wandb.sdk.wandb_run import Run

import stepsync
from stepsync import _wandb


class TestUnsupportedWandb:
    """wandb 0.12 to 0.14 (faked here): patch() and the activation leave wandb unpatched, with
    one warning naming the minimum version, and never raise."""

    NAMES = ("log", "_log", "define_metric", "step")

    @pytest.fixture
    def old_wandb(self, monkeypatch):
        monkeypatch.setattr(_wandb, "SUPPORTED", False)
        monkeypatch.setattr(_wandb, "_warned_unsupported", False)
        monkeypatch.delenv(_wandb._WARNED_VARIABLE, raising=False)

    def test_patch_warns_once_and_patches_nothing(self, old_wandb):
        before = {name: Run.__dict__.get(name) for name in self.NAMES}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stepsync.patch()
            stepsync.patch()
        assert [w.category for w in caught] == [RuntimeWarning]
        assert "stepsync needs wandb >= 0.15.0" in str(caught[0].message)
        assert "unpatched" in str(caught[0].message)
        assert not stepsync.is_patched()
        assert {name: Run.__dict__.get(name) for name in self.NAMES} == before
        stepsync.unpatch()  # a no-op, no error
        assert {name: Run.__dict__.get(name) for name in self.NAMES} == before

    def test_activation_leaves_wandb_unpatched_without_an_error_line(
        self, old_wandb, capsys, monkeypatch
    ):
        import _stepsync_boot

        monkeypatch.setattr(_stepsync_boot, "_applied", False)
        with pytest.warns(RuntimeWarning, match=r"wandb >= 0\.15\.0"):
            _stepsync_boot.apply_patch()
        assert not stepsync.is_patched()
        assert "activation failed" not in capsys.readouterr().err

    @pytest.mark.parametrize(
        ("text", "version"),
        [("0.15.12", (0, 15, 12)), ("0.19.0rc1", (0, 19, 0)), ("0.31.0.dev1", (0, 31, 0))],
    )
    def test_version_parsing(self, text, version):
        assert _wandb._version(text) == version


class TestPatchIdentity:
    def test_patch_is_idempotent_and_unpatch_restores_identity(self):
        """patch() twice wraps once; unpatch() puts back wandb's exact function objects."""
        originals = {name: Run.__dict__[name] for name in ("log", "_log", "define_metric")}
        stepsync.patch()
        wrapped_once = Run.__dict__["log"]
        stepsync.patch()
        assert Run.__dict__["log"] is wrapped_once
        assert wrapped_once.__wrapped__ is originals["log"]
        assert stepsync.is_patched()
        stepsync.unpatch()
        assert not stepsync.is_patched()
        for name, original in originals.items():
            assert Run.__dict__[name] is original

    def test_bound_method_captured_while_patched_is_native_after_unpatch(self, offline_run):
        """A `run.log` captured while patched logs natively once unpatched (kill switch)."""
        stepsync.patch()
        run = offline_run()
        captured = run.log
        stepsync.unpatch()
        captured({"a": 1}, step=3)
        captured({"b": 2}, step=1)  # natively dropped: proves the call was not routed
        rows = user_rows(rows_of(run))
        assert rows == [{"a": 1, "_step": 3}]

    def test_the_patch_looks_like_wandbs_own_method(self, offline_run):
        """Name, docstring, signature and wrong-argument errors are wandb's own, patched or not."""
        run = offline_run()
        bad_calls = (
            lambda: run.log(),
            lambda: run.log({"a": 1}, 1, True, 5, 6),
            lambda: run.log({"a": 1}, bogus=1),
        )

        def describe() -> tuple[Any, ...]:
            errors = []
            for call in bad_calls:
                with pytest.raises(TypeError) as caught:
                    call()
                errors.append(str(caught.value))
            log = Run.__dict__["log"]
            return log.__name__, log.__qualname__, log.__doc__, inspect.signature(log), errors

        native = describe()
        stepsync.patch()
        assert Run.__dict__["log"].__wrapped__ is _wandb.ORIGINALS["log"]  # patched indeed
        assert describe() == native


class TestRouting:
    def test_patch_after_init_repoints_wandb_log(self, offline_run):
        """Patching after wandb.init re-binds wandb.log, so module-level calls are routed too."""
        run = offline_run(reinit="finish_previous")  # "create_new" leaves wandb.log unbound
        assert wandb.log.__self__ is run
        stepsync.patch()
        wandb.log({"late": 1}, step=5)
        wandb.log({"early": 2}, step=2)  # natively dropped; stepsync keeps it
        rows = user_rows(rows_of(run))
        kept = sorted((r["stepsync/step"], k) for r in rows for k in r if k in ("early", "late"))
        assert kept == [(2, "early"), (5, "late")]

    def test_private_log_inside_scope_joins_the_scope_row(self, offline_run):
        """wandb.watch-style `run._log(commit=False)` lands in the active scope's row, once."""
        stepsync.patch()
        run = offline_run()
        for step in range(3):
            with stepsync.step_scope(step):
                run.log({"loss": float(step)})
                run._log({"gradients/w": step * 10}, commit=False)
        rows = user_rows(rows_of(run))
        assert rows == [
            {"loss": step, "gradients/w": step * 10, "stepsync/step": step, "_step": step}
            for step in range(3)
        ]
        assert stepsync.get_manager(run).get_stats()["wandb_calls"] == 3

    def test_commits_do_not_reenter_the_patch(self, offline_run):
        """Each committed row is one wandb call: total_logs counts only the user's calls."""
        stepsync.patch()
        run = offline_run()
        with stepsync.step_scope(0):
            run.log({"a": 1})
            run.log({"b": 2})
        stats = stepsync.get_manager(run).get_stats()
        assert (stats["total_logs"], stats["wandb_calls"], stats["calls_saved"]) == (2, 1, 1)
        assert not _wandb.GUARD.active

    def test_finish_flushes_pending_data(self, offline_run):
        """run.finish() commits what is still pending before wandb closes the run."""
        stepsync.patch()
        run = offline_run()
        run.log({"a": 1}, step=0)
        run.log({"b": 2}, step=1)
        assert stepsync.get_manager(run).get_stats()["pending_steps"] == 2
        run.finish()
        assert [r["stepsync/step"] for r in rows_of(run)] == [0, 1]


def make_late_row(run) -> None:
    """Commit step 1, then log to step 0: a late row, whose native step differs (docs/design.md,
    "Chart axis")."""
    with stepsync.step_scope(1):
        run.log({"train/loss": 1.0})
    run.log({"eval/acc": 0.5}, step=0)
    stepsync.get_manager(run).flush()


class TestChartAxis:
    def test_nothing_is_declared_while_native_equals_logical(self, offline_run):
        """A run with no late rows and no step jumps gets no metric record from stepsync."""
        stepsync.patch()
        run = offline_run()
        for step in range(3):
            with stepsync.step_scope(step):
                run.log({"train/loss": 1.0, "eval/acc": 0.5})
        assert declared_metrics(run) == set()
        assert [r["stepsync/step"] for r in rows_of(run)] == [0, 1, 2]

    def test_the_first_late_row_puts_every_key_on_the_axis_once(self, offline_run):
        """The first row whose native step differs declares the axis and every key committed
        so far, each once, by name; a key new after that is declared at its first commit."""
        stepsync.patch()
        run = offline_run()
        with stepsync.step_scope(0):
            run.log({"train/loss": 2.0})
        make_late_row(run)
        with stepsync.step_scope(2):
            run.log({"train/loss": 0.5, "new": 1})
        metrics = [m for m in records_of(run, "metric") if not derived_from_glob(m.metric)]
        assert declared_metrics(run) == {
            ("stepsync/step", ""),
            ("train/loss", "stepsync/step"),
            ("eval/acc", "stepsync/step"),
            ("new", "stepsync/step"),
        }
        assert len(metrics) == 4
        assert not any(m.metric.glob_name for m in metrics)
        assert not any(m.metric.options.step_sync for m in metrics)  # never ORed onto the user's

    def test_a_key_new_while_another_step_commits_is_still_declared(self, offline_run):
        """Keys are declared at their row's first commit, even when an earlier step's commit
        (with only known keys) came between the call and that commit."""
        stepsync.patch()
        run = offline_run()
        make_late_row(run)
        run.log({"train/loss": 2}, step=2)
        run.log({"b": 3}, step=3)  # new key, pending behind step 2
        stepsync.get_manager(run).commit_closed_steps()  # step 2 (known keys only); 3 waits
        run.finish()
        assert ("b", "stepsync/step") in declared_metrics(run)
        assert [r["stepsync/step"] for r in rows_of(run)] == [1, 0, 2, 3]

    def test_user_axes_are_left_alone(self, offline_run):
        """A key the user gave an axis (by name or glob) is not re-declared by stepsync."""
        stepsync.patch()
        run = offline_run()
        run.define_metric("train/global_step")
        run.define_metric("train/*", step_metric="train/global_step")
        run.define_metric("eval/acc", step_metric="train/global_step")
        with stepsync.step_scope(0):
            run.log({"train/loss": 1.0, "eval/acc": 0.5, "other": 1, "train/global_step": 0})
        make_late_row(run)
        names = [
            m.metric.name
            for m in records_of(run, "metric")
            if m.metric.name and not derived_from_glob(m.metric)
        ]
        assert "train/loss" not in names
        assert names.count("eval/acc") == 1  # the user's own declaration only
        assert "other" in names
