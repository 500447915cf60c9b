"""Synced steps across real gloo process groups of 2 and 4 ranks, read back from rank 0's run.

The scenarios live in ``_worker.py``; each job runs several of them in one process group, so
torch is imported once per rank. Rank r logs, for step s: loss = s + r (a torch scalar on the
last rank), tokens = 10 (r + 1), grad/norm = r s, lr = 0.1 (r + 1), acc = r / 10; the last
rank alone also logs only_last, note and (at step 0) a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _launch import Job, needs_torch, run_job

from stepsync.history import read_history

pytestmark = needs_torch

STEPS = 6
SCENARIOS = {2: ["reduce", "gather", "skip", "lost"], 4: ["reduce", "gather", "skip"]}


@pytest.fixture(scope="module", params=[2, 4], ids=["2-ranks", "4-ranks"])
def job(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Job:
    """One job per world size, shared by this module's tests."""
    world_size: int = request.param
    return run_job(world_size, SCENARIOS[world_size], tmp_path_factory.mktemp("job"))


def world_of(job: Job) -> int:
    return len(job.reports)


def rows_of(job: Job) -> list[dict[str, Any]]:
    """The rows of rank 0's offline run, read back from its file."""
    return read_history(Path(job.reports[0]["reduce"]["run_dir"]))


class TestReducedRows:
    """Rank 0's run gets one row per step with every rank's values combined."""

    def test_each_step_is_one_row_on_its_logical_step(self, job: Job) -> None:
        """Rank 0 commits exactly one row per synced step, native step = logical step."""
        rows = rows_of(job)
        assert [row["stepsync/step"] for row in rows] == list(range(STEPS))
        assert [row["_step"] for row in rows] == list(range(STEPS))

    def test_values_are_reduced_per_key(self, job: Job) -> None:
        """mean by default, then sum, max (by glob), min, and one key per rank for "rank"."""
        world = world_of(job)
        for step, row in enumerate(rows_of(job)):
            assert row["loss"] == pytest.approx(step + (world - 1) / 2)
            assert row["tokens"] == 10 * world * (world + 1) // 2
            assert row["grad/norm"] == (world - 1) * step
            assert row["lr"] == pytest.approx(0.1)
            for rank in range(world):
                assert row[f"rank{rank}/acc"] == pytest.approx(rank / 10)
            assert "acc" not in row

    def test_keys_logged_on_one_rank_keep_that_ranks_value(self, job: Job) -> None:
        """A key only one rank logged keeps its value; a non-numeric value travels as is."""
        world = world_of(job)
        rows = rows_of(job)
        for step, row in enumerate(rows):
            assert row["only_last"] == 1.0 + step
            assert row["note"] == f"rank {world - 1} step {step}"
        assert rows[0]["samples"]["_type"] == "table-file"
        assert rows[0]["samples"]["nrows"] == 1
        assert all("samples" not in row for row in rows[1:])

    def test_ranks_at_different_speeds_meet_at_the_right_step(self, job: Job) -> None:
        """The slowest rank logs each step in several late calls; its values join that step."""
        world = world_of(job)
        for step, row in enumerate(rows_of(job)):
            # grad/norm's max and only_last come from the slowest (last) rank alone.
            assert (row["grad/norm"], row["only_last"]) == ((world - 1) * step, 1.0 + step)

    def test_a_block_that_raised_still_joins_the_exchange(self, job: Job) -> None:
        """The last rank raised inside step 3's block and went on: no step got mixed up."""
        reports = job.scenario("reduce")
        assert reports[-1]["failures"] == 1
        row = rows_of(job)[3]
        assert row["only_last"] == 4.0
        assert row["loss"] == pytest.approx(3 + (world_of(job) - 1) / 2)

    def test_only_the_destination_gets_the_combined_row(self, job: Job) -> None:
        """``SyncedStep.result`` holds the row on rank 0 and is None on every other rank."""
        reports = job.scenario("reduce")
        assert all(result is not None for result in reports[0]["results"])
        for report in reports[1:]:
            assert report["results"] == [None] * STEPS


class TestGatherStep:
    """``gather_step`` is the collective underneath, usable on its own."""

    def test_returns_the_combined_dict_on_rank_0_only(self, job: Job) -> None:
        """sum over ranks on rank 0; None on the others."""
        world = world_of(job)
        reports = job.scenario("gather")
        assert reports[0]["small"] == {"x": world * (world - 1) // 2, "only0": 1.5}
        assert all(report["small"] is None for report in reports[1:])

    def test_a_payload_larger_than_the_frame_arrives_whole(self, job: Job) -> None:
        """Ranks sending thousands of keys (past the first frame size) lose none of them."""
        assert job.scenario("gather")[0]["big_keys"] == 800 * (world_of(job) - 1)


class TestRankMismatch:
    """Ranks that disagree on the synced steps get RankMismatchError, never a silent mix."""

    def test_a_rank_that_skips_a_scope_makes_every_rank_raise(self, job: Job) -> None:
        """Rank 1 skipped step 2: at the next exchange every rank raises, naming each step."""
        world = world_of(job)
        expected = {str(rank): 3 if rank == 1 else 2 for rank in range(world)}
        for report in job.scenario("skip"):
            assert report["error"] == "RankMismatchError"
            assert report["steps"] == expected
            assert "rank 1 at step 3" in report["message"]

    @pytest.mark.parametrize("job", [2], ids=["2-ranks"], indirect=True)
    def test_a_rank_that_never_arrives_fails_after_the_group_timeout(self, job: Job) -> None:
        """Rank 1 stays alive but never joins step 1: rank 0 raises after the 5 s timeout."""
        report = job.reports[0]["lost"]
        assert report["error"] == "RankMismatchError"
        assert "could not exchange step 1" in report["message"]
        assert 4.5 <= report["waited"] < 15.0
