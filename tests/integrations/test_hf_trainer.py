"""Hugging Face Trainer: with stepsync on, the Trainer's rows and a user callback share steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from framework_runs import Run, read_run, requires, run_native_and_synced, values_of
from hf_scenario import EVAL_EVERY, STEPS, USER_KEY

pytestmark = requires("transformers", "torch")

ALL_STEPS = list(range(1, STEPS + 1))
EVAL_STEPS = list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    """The issue's scenario run natively and with STEPSYNC_ENABLED=1 (real Trainer, CPU)."""
    return run_native_and_synced("hf_scenario.py", tmp_path_factory.mktemp("hf"))


def assert_rows_on_global_step(rows: list[dict[str, Any]]) -> None:
    """Every Trainer row (train or eval) sits at the logical step it reports."""
    trainer_rows = [row for row in rows if "train/global_step" in row]
    assert trainer_rows
    for row in trainer_rows:
        assert row["stepsync/step"] == row["train/global_step"], row


class TestNativeWandb:
    """Baseline: plain wandb loses the callback's values once eval rows push its step ahead."""

    def test_drops_callback_values(self, runs: tuple[Run, Run]) -> None:
        """Natively fewer than all 20 callback values survive, and wandb-core says it dropped."""
        native, _ = runs
        kept = values_of(native.rows, USER_KEY)
        assert len(kept) < STEPS, kept
        assert native.drop_warnings > 0


class TestWithStepsync:
    """STEPSYNC_ENABLED=1 and no code change: nothing is dropped and rows share one step axis."""

    def test_keeps_every_callback_value(self, runs: tuple[Run, Run]) -> None:
        """All 20 values of the step-logging callback are in the run file, each once."""
        _, synced = runs
        assert sorted(values_of(synced.rows, USER_KEY)) == ALL_STEPS
        assert synced.drop_warnings == 0

    def test_callback_value_lands_at_its_step(self, runs: tuple[Run, Run]) -> None:
        """A value logged with step=global_step is in the row of that logical step."""
        _, synced = runs
        for row in synced.rows:
            if USER_KEY in row:
                assert row["stepsync/step"] == row[USER_KEY]
                assert row.get("train/global_step", row[USER_KEY]) == row[USER_KEY]

    def test_train_and_eval_rows_carry_global_step(self, runs: tuple[Run, Run]) -> None:
        """Every train and eval row has stepsync/step == train/global_step; eval lands at 5k."""
        _, synced = runs
        assert_rows_on_global_step(synced.rows)
        eval_steps = [row["stepsync/step"] for row in synced.rows if "eval/loss" in row]
        assert eval_steps == EVAL_STEPS
        train_steps = [row["stepsync/step"] for row in synced.rows if "train/loss" in row]
        assert train_steps == ALL_STEPS

    def test_native_step_equals_logical_step(self, runs: tuple[Run, Run]) -> None:
        """With no late data, wandb's own _step matches the logical step in every row."""
        _, synced = runs
        assert all(row["_step"] == row["stepsync/step"] for row in synced.rows)


class TestExplicitCallback:
    """``StepSyncCallback`` in code, no environment variable, in this process."""

    def test_keeps_every_value(self, tmp_path: Path) -> None:
        """Passing StepSyncCallback() to the Trainer keeps all callback values at their steps."""
        from hf_scenario import train

        import stepsync
        from stepsync.integrations import unregister_hooks
        from stepsync.integrations.transformers import StepSyncCallback

        try:
            train(str(tmp_path), [StepSyncCallback()])
        finally:
            stepsync.unpatch()
            unregister_hooks()
        rows = read_run(tmp_path).rows
        assert sorted(values_of(rows, USER_KEY)) == ALL_STEPS
        assert_rows_on_global_step(rows)
