"""Accelerate: per-step and per-epoch `accelerator.log(..., step=...)` values are all kept."""

from __future__ import annotations

import pytest
from accelerate_scenario import EPOCHS, STEPS_PER_EPOCH
from framework_runs import Run, requires, run_native_and_synced, values_of

pytestmark = requires("accelerate", "torch")

ALL_STEPS = list(range(EPOCHS * STEPS_PER_EPOCH))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    """The two-time-scale loop run natively and with STEPSYNC_ENABLED=1 (real Accelerator)."""
    return run_native_and_synced("accelerate_scenario.py", tmp_path_factory.mktemp("accelerate"))


class TestNativeWandb:
    """Baseline: epoch values logged at step=epoch are behind wandb's step and dropped."""

    def test_drops_epoch_values(self, runs: tuple[Run, Run]) -> None:
        """Natively the per-step values survive but the per-epoch ones do not."""
        native, _ = runs
        assert len(values_of(native.rows, "train/loss")) == len(ALL_STEPS)
        assert len(values_of(native.rows, "epoch/mean_loss")) < EPOCHS
        assert native.drop_warnings > 0


class TestWithStepsync:
    """STEPSYNC_ENABLED=1 and no code change: both time scales are kept at their true steps."""

    def test_keeps_per_step_values_at_their_steps(self, runs: tuple[Run, Run]) -> None:
        """Each per-step value is in the row of its logical step."""
        _, synced = runs
        steps = [row["stepsync/step"] for row in synced.rows if "train/loss" in row]
        assert steps == ALL_STEPS

    def test_keeps_late_epoch_values_at_their_true_step(self, runs: tuple[Run, Run]) -> None:
        """Every epoch value is kept, in a row whose stepsync/step is the step it was logged at."""
        _, synced = runs
        epoch_rows = [row for row in synced.rows if "epoch/mean_loss" in row]
        assert [row["epoch"] for row in epoch_rows] == list(range(EPOCHS))
        assert all(row["stepsync/step"] == row["epoch"] for row in epoch_rows)
        assert synced.drop_warnings == 0
