"""TRL (a Trainer subclass): profiling rows, completions tables and callbacks share each step."""

from __future__ import annotations

import pytest
from framework_runs import Run, requires, run_native_and_synced, values_of
from trl_scenario import STEPS, USER_KEY

pytestmark = requires("trl", "torch")

ALL_STEPS = list(range(1, STEPS + 1))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    """A tiny GRPO run natively and with STEPSYNC_ENABLED=1 (real TRL trainer, CPU)."""
    return run_native_and_synced("trl_scenario.py", tmp_path_factory.mktemp("trl"))


class TestNativeWandb:
    """Baseline: TRL's many step-less rows leave a step-logging callback far behind."""

    def test_drops_callback_values(self, runs: tuple[Run, Run]) -> None:
        """Natively fewer than all callback values survive, and wandb-core reports drops."""
        native, _ = runs
        assert len(values_of(native.rows, USER_KEY)) < STEPS
        assert native.drop_warnings > 0


class TestWithStepsync:
    """STEPSYNC_ENABLED=1: one row per step holds metrics, timers, the table and the callback."""

    def test_keeps_every_callback_value(self, runs: tuple[Run, Run]) -> None:
        """All callback values are kept, each in the row of its step."""
        _, synced = runs
        assert sorted(values_of(synced.rows, USER_KEY)) == ALL_STEPS
        assert all(row["stepsync/step"] == row[USER_KEY] for row in synced.rows if USER_KEY in row)
        assert synced.drop_warnings == 0

    def test_completions_table_lands_at_its_step(self, runs: tuple[Run, Run]) -> None:
        """Each completions table is in the row of the step that generated it, with its metrics."""
        _, synced = runs
        table_rows = [row for row in synced.rows if "completions" in row]
        assert [row["stepsync/step"] for row in table_rows] == ALL_STEPS
        assert all(row["train/global_step"] == row["stepsync/step"] for row in table_rows)

    def test_profiling_rows_join_their_step(self, runs: tuple[Run, Run]) -> None:
        """TRL's step-less timers go to the step being computed: one row per step in all."""
        _, synced = runs
        assert [row["stepsync/step"] for row in synced.rows] == ALL_STEPS
        assert all(any(key.startswith("profiling/") for key in row) for row in synced.rows)
