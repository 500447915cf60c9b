"""stepsync.integrations: post-import hooks that patch frameworks safely and reversibly."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wrapt
from framework_runs import scenario_env

import stepsync
from stepsync import integrations

FRAMEWORKS = ("torch", "transformers", "lightning", "pytorch_lightning", "accelerate", "trl")


@pytest.fixture
def patched() -> Iterator[None]:
    """stepsync.patch() for one test, fully undone afterwards (framework patches included)."""
    stepsync.patch()
    try:
        yield
    finally:
        stepsync.unpatch()
        integrations.unregister_hooks()


class TestImportCost:
    """Enabling stepsync never imports a framework the user did not import."""

    def test_patch_imports_no_framework(self, tmp_path: Path) -> None:
        """With STEPSYNC_ENABLED=1, import wandb + stepsync.patch() leave frameworks unimported."""
        code = textwrap.dedent(
            f"""
            import sys, wandb, stepsync
            stepsync.patch()
            assert stepsync.is_patched()
            print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))
            """
        )
        env = scenario_env(tmp_path, enabled=True)
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "[]"


class TestHookSafety:
    """A broken integration warns once and never breaks the user's import or training."""

    def test_failing_install_does_not_break_import(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        patched: None,
    ) -> None:
        """If installing a patch raises, the framework still imports and one WARNING is logged."""
        (tmp_path / "fake_framework_for_stepsync.py").write_text("VALUE = 42\n")
        (tmp_path / "fake_integration_for_stepsync.py").write_text(
            "def install(module):\n    raise RuntimeError('framework changed shape')\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setitem(
            integrations._TARGETS, "fake_framework_for_stepsync", "fake_integration_for_stepsync"
        )
        integrations.register_hooks()
        with caplog.at_level(logging.WARNING, logger="stepsync.integrations"):
            import fake_framework_for_stepsync  # type: ignore[import-not-found]

            integrations.warn_once("install:fake_framework_for_stepsync", RuntimeError("again"))
        assert fake_framework_for_stepsync.VALUE == 42
        warnings = [r for r in caplog.records if r.name == "stepsync.integrations"]
        assert len(warnings) == 1
        assert "framework changed shape" in warnings[0].getMessage()
        assert "fake_framework_for_stepsync" not in integrations.installed()
        sys.modules.pop("fake_framework_for_stepsync", None)


class TestTransformersHook:
    """The Trainer's callback dispatcher makes each event's step the current step."""

    @pytest.fixture
    def dispatch(self) -> Callable[[str, int], Any]:
        """Call ``CallbackHandler.call_event(event, ...)`` with a state at a given global_step."""
        trainer_callback = pytest.importorskip("transformers.trainer_callback")
        handler = trainer_callback.CallbackHandler(
            [trainer_callback.DefaultFlowCallback()], None, None, None, None
        )

        def call(event: str, global_step: int) -> Any:
            state = trainer_callback.TrainerState(global_step=global_step)
            return handler.call_event(event, None, state, trainer_callback.TrainerControl())

        return call

    def test_step_for_event(self) -> None:
        """Events inside a step point at the step in progress; the others at the last one done."""
        pytest.importorskip("transformers")  # the module subclasses transformers' TrainerCallback
        from stepsync.integrations.transformers import step_for_event

        assert step_for_event("on_step_begin", 4) == 5
        assert step_for_event("on_optimizer_step", 4) == 5
        assert step_for_event("on_step_end", 5) == 5
        assert step_for_event("on_log", 5) == 5
        assert step_for_event("on_evaluate", 5) == 5

    def test_events_set_current_step(
        self, patched: None, offline_run: Any, dispatch: Callable[[str, int], Any]
    ) -> None:
        """on_step_begin at global_step 4 makes 5 current; on_log at 7 makes 7 current."""
        run = offline_run(reinit="finish_previous")  # the Trainer follows wandb.run
        manager = stepsync.get_manager(run)
        dispatch("on_step_begin", 4)
        assert manager.current_step == 5
        dispatch("on_log", 7)
        assert manager.current_step == 7
        assert "transformers.trainer_callback" in integrations.installed()

    def test_unregister_restores_dispatcher(
        self, offline_run: Any, dispatch: Callable[[str, int], Any]
    ) -> None:
        """After unregister_hooks(), call_event is transformers' own function again."""
        from transformers.trainer_callback import CallbackHandler

        original = CallbackHandler.__dict__["call_event"]
        stepsync.patch()
        try:
            assert CallbackHandler.__dict__["call_event"] is not original
            run = offline_run(reinit="finish_previous")
            manager = stepsync.get_manager(run)
        finally:
            stepsync.unpatch()
            integrations.unregister_hooks()
        assert CallbackHandler.__dict__["call_event"] is original
        dispatch("on_step_begin", 10)
        assert manager.current_step is None


class TestLightningHook:
    """WandbLogger.log_metrics makes its step the current step of the logger's run."""

    def test_log_metrics_step_becomes_current(self, patched: None, offline_run: Any) -> None:
        """log_metrics(step=7) sets step 7, and a user's step-less log joins that row."""
        wandb_logger = pytest.importorskip("lightning.pytorch.loggers.wandb")
        from _wandb_helpers import rows_of

        run = offline_run()
        logger = wandb_logger.WandbLogger(experiment=run)
        logger.log_metrics({"train/loss": 0.5}, step=7)
        assert stepsync.get_manager(run).current_step == 7
        run.log({"user/value": 1})
        rows = [row for row in rows_of(run) if "train/loss" in row]
        assert len(rows) == 1
        assert rows[0]["stepsync/step"] == rows[0]["trainer/global_step"] == 7
        assert rows[0]["user/value"] == 1

    def test_unpatched_logger_is_untouched(self, offline_run: Any) -> None:
        """Without stepsync.patch(), the hook is inert: no current step is set."""
        wandb_logger = pytest.importorskip("lightning.pytorch.loggers.wandb")

        run = offline_run()
        integrations.register_hooks()
        try:
            wandb_logger.WandbLogger(experiment=run).log_metrics({"a": 1.0}, step=3)
            assert stepsync.get_manager(run).current_step is None
        finally:
            integrations.unregister_hooks()


class TestLightningHookWithoutLightning:
    """The Lightning hook on any supported wandb, with a stand-in for ``WandbLogger``."""

    def test_logger_step_becomes_the_current_step(self, offline_run, patched) -> None:
        """``WandbLogger.log_metrics(metrics, step=7)`` makes 7 the run's current step (on wandb
        before 0.21.1 too, which has no ``wandb.Run`` export)."""
        import types

        from stepsync.integrations import lightning

        run = offline_run()

        class WandbLogger:
            experiment = run

            def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
                run.log({**metrics, "trainer/global_step": step})

        module = types.ModuleType("fake_lightning_loggers")
        module.WandbLogger = WandbLogger  # type: ignore[attr-defined]
        installed = lightning.install(module)
        try:
            WandbLogger().log_metrics({"loss": 1.0}, step=7)
            assert stepsync.get_manager(run).current_step == 7
        finally:
            for owner, name, handle in installed:
                wrapt.unwrap_object(owner, name, handle)
