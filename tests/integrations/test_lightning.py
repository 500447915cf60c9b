"""PyTorch Lightning: with stepsync on, WandbLogger's step is the step of the user's own logs."""

from __future__ import annotations

import pytest
from framework_runs import Run, requires, run_native_and_synced, values_of
from lightning_scenario import STEPS, USER_KEY, VAL_EVERY

pytestmark = requires("lightning", "torch")

ALL_STEPS = list(range(STEPS))  # Lightning's global_step counts from 0 in training_step
VAL_STEPS = list(range(VAL_EVERY - 1, STEPS, VAL_EVERY))  # validation after every 5th batch


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    """A tiny LightningModule fitted natively and with STEPSYNC_ENABLED=1 (real Trainer, CPU)."""
    return run_native_and_synced("lightning_scenario.py", tmp_path_factory.mktemp("lightning"))


class TestNativeWandb:
    """Baseline: WandbLogger's step-less rows push wandb ahead of the user's explicit steps."""

    def test_drops_user_values(self, runs: tuple[Run, Run]) -> None:
        """Natively some of the 20 `experiment.log(..., step=global_step)` values are dropped."""
        native, _ = runs
        assert len(values_of(native.rows, USER_KEY)) < STEPS
        assert native.drop_warnings > 0


class TestWithStepsync:
    """STEPSYNC_ENABLED=1 and no code change: one row per step holds logger and user values."""

    def test_keeps_every_user_value(self, runs: tuple[Run, Run]) -> None:
        """All 20 user values are in the run file, and wandb-core dropped nothing."""
        _, synced = runs
        assert sorted(values_of(synced.rows, USER_KEY)) == ALL_STEPS
        assert synced.drop_warnings == 0

    def test_rows_carry_trainer_global_step(self, runs: tuple[Run, Run]) -> None:
        """Every logger row has stepsync/step == trainer/global_step, user value included."""
        _, synced = runs
        logger_rows = [row for row in synced.rows if "trainer/global_step" in row]
        assert len(logger_rows) == STEPS
        for row in logger_rows:
            assert row["stepsync/step"] == row["trainer/global_step"] == row[USER_KEY]

    def test_validation_lands_at_its_step(self, runs: tuple[Run, Run]) -> None:
        """Validation metrics join the row of the training step they followed."""
        _, synced = runs
        val_steps = [row["stepsync/step"] for row in synced.rows if "val/loss" in row]
        assert val_steps == VAL_STEPS
