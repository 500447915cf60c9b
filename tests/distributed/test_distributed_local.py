"""``stepsync.distributed`` in one process: no process group, no torch, bad arguments."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import wandb
from _wandb_helpers import rows_of, user_rows

import stepsync
from stepsync.distributed import (
    SyncedStep,
    current_synced_step,
    gather_step,
    synced_step_scope,
)


class TestImport:
    """Importing the module costs a rank that never syncs nothing beyond stepsync itself."""

    def test_importing_it_does_not_import_torch(self) -> None:
        """``import stepsync.distributed`` leaves torch unimported."""
        probe = "import sys, stepsync.distributed; print('torch' in sys.modules)"
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == "False"


class TestGroupOfOne:
    """Without an initialized process group a synced scope combines this process alone."""

    def test_commits_one_row_with_the_reductions_applied(
        self, offline_run: Callable[..., Any]
    ) -> None:
        """One row per step; "rank" keys get the rank0/ prefix, the others keep their value."""
        run = offline_run()
        manager = stepsync.get_manager(run)
        for step in range(3):
            with synced_step_scope(step, reduce={"acc": "rank", "n": "sum"}, run=run) as synced:
                manager.log({"loss": step / 2, "n": 4})
                synced.log({"acc": 0.5, "note": "text"})
        assert user_rows(rows_of(run)) == [
            {
                "_step": step,
                "stepsync/step": step,
                "loss": step / 2,
                "n": 4,
                "rank0/acc": 0.5,
                "note": "text",
            }
            for step in range(3)
        ]

    def test_a_block_that_raises_still_commits_what_it_logged(
        self, offline_run: Callable[..., Any]
    ) -> None:
        """The error propagates; the values logged before it are committed to the step."""
        run = offline_run()

        def failing_step() -> None:
            with synced_step_scope(7, run=run) as synced:
                synced.log({"loss": 1.0})
                raise KeyError("boom")

        with pytest.raises(KeyError):
            failing_step()
        assert [(row["stepsync/step"], row["loss"]) for row in rows_of(run)] == [(7, 1.0)]

    def test_a_process_without_a_run_gets_the_row_as_result(self) -> None:
        """No wandb run: ``.log()`` still works and ``.result`` holds the combined row."""
        assert wandb.run is None
        with synced_step_scope(2, reduce="rank") as synced:
            synced.log({"loss": 1.5}, priority=1)
            synced.log({"loss": 9.0}, priority=10)  # priority 1 wins the collision
            assert synced.result is None
        assert synced.result == {"rank0/loss": 1.5}

    def test_current_synced_step_is_the_innermost_scope(self) -> None:
        """``current_synced_step()`` is the active scope's step inside it, None outside."""
        assert current_synced_step() is None
        with synced_step_scope(1) as synced:
            assert current_synced_step() is synced
        assert current_synced_step() is None

    def test_numpy_scalars_are_numbers_and_the_rest_travels_as_is(self) -> None:
        """numpy scalars become Python numbers; bools and arrays are kept untouched."""
        array = np.arange(3)
        row = gather_step({"f": np.float32(1.5), "i": np.int64(3), "flag": True, "array": array}, 0)
        assert row is not None
        assert (row["f"], type(row["f"])) == (1.5, float)
        assert (row["i"], type(row["i"])) == (3.0, float)  # mean: always a float
        assert row["flag"] is True
        assert row["array"] is array


class TestArguments:
    """Bad arguments fail at the call site with TypeError or ValueError."""

    @pytest.mark.parametrize(
        ("reduce", "error"),
        [
            ("median", ValueError),
            (3, TypeError),
            ({"loss": "avg"}, ValueError),
            ({"loss": 1}, TypeError),
            ({"": "sum"}, TypeError),
        ],
    )
    def test_a_bad_reduce_spec(self, reduce: Any, error: type[Exception]) -> None:
        """Unknown reductions and non-str patterns are refused before the block runs."""
        with pytest.raises(error), synced_step_scope(0, reduce=reduce):
            pytest.fail("the block must not run")
        with pytest.raises(error):
            gather_step({"x": 1}, 0, reduce=reduce)

    @pytest.mark.parametrize(("step", "error"), [(-1, ValueError), (1.0, TypeError)])
    def test_a_bad_step(self, step: Any, error: type[Exception]) -> None:
        """Steps follow ``step_scope``'s rules: non-negative integers."""
        with pytest.raises(error), synced_step_scope(step):
            pytest.fail("the block must not run")

    def test_a_group_without_torch_distributed(self) -> None:
        """``group=`` with no initialized process group is a usage error, not a silent no-op."""
        with pytest.raises(ValueError, match="not initialized"), synced_step_scope(0, group=1):
            pytest.fail("the block must not run")

    def test_logging_something_that_is_not_a_mapping(self) -> None:
        """``SyncedStep.log`` rejects non-mappings like ``wandb.log`` does."""
        with synced_step_scope(0) as synced:
            assert isinstance(synced, SyncedStep)
            with pytest.raises(TypeError):
                synced.log([("loss", 1.0)])  # type: ignore[arg-type]


class TestStepScopeSync:
    """``step_scope(step, sync="ranks")`` is the short form of ``synced_step_scope``."""

    def test_sync_ranks_reduces_like_synced_step_scope(
        self, offline_run: Callable[..., Any]
    ) -> None:
        """Rows written through step_scope(sync="ranks") carry the reduced keys, one per step."""
        run = offline_run(reinit="finish_previous")  # synced scopes find the run as wandb.run
        manager = stepsync.get_manager(run)
        for step in range(2):
            with stepsync.step_scope(step, sync="ranks", reduce={"acc": "rank"}) as active:
                assert active == step
                manager.log({"acc": 0.25, "loss": 1.0})
        assert user_rows(rows_of(run)) == [
            {"_step": step, "stepsync/step": step, "rank0/acc": 0.25, "loss": 1}
            for step in range(2)
        ]

    def test_bad_sync_and_reduce_without_sync_are_refused(self) -> None:
        """An unknown sync= value, or reduce= without sync, raises ValueError at the call."""
        with pytest.raises(ValueError, match="sync"), stepsync.step_scope(0, sync="nodes"):  # type: ignore[arg-type]
            pass
        with pytest.raises(ValueError, match="reduce"), stepsync.step_scope(0, reduce="sum"):
            pass
