"""``examples/ddp_training.py`` runs as documented: torchrun, 2 ranks, gloo on CPU, offline."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _launch import JOB_TIMEOUT, needs_torch

from stepsync.history import read_history

pytestmark = needs_torch

EXAMPLE = Path(__file__).parents[2] / "examples" / "ddp_training.py"


class TestDdpExample:
    """The example's own command works and rank 0's run holds the combined rows it prints."""

    def test_torchrun_two_ranks(self, tmp_path: Path) -> None:
        """One row per step, samples summed over both ranks, one data/shard key per rank."""
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc-per-node", "2", str(EXAMPLE)]
        # Its own session, so a hung job is killed with its workers (and nothing else).
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "TMPDIR": str(tmp_path)},
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"the example hung:\n{output}")
        assert proc.returncode == 0, output
        assert "rank 0 kept 12 rows, one per step:" in output
        match = re.search(r"offline run: (\S+)", output)
        assert match is not None
        rows = read_history(match.group(1))
        assert [row["stepsync/step"] for row in rows] == list(range(12))
        assert {row["train/samples"] for row in rows} == {32}
        assert {(row["rank0/data/shard"], row["rank1/data/shard"]) for row in rows} == {(0, 1)}
        assert [row["stepsync/step"] for row in rows if "eval/score" in row] == [0, 4, 8]
