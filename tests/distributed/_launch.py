"""Start a gloo job of N ranks (one ``_worker.py`` process each) and collect their reports."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).with_name("_worker.py")
#: A job that takes longer than this is hung: its processes are killed and the test fails.
JOB_TIMEOUT = 120.0

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="torch is not installed"
)


@dataclass
class Job:
    """What every rank of a finished job reported, indexed by rank."""

    reports: list[dict[str, Any]]
    seconds: float

    def scenario(self, name: str) -> list[dict[str, Any]]:
        """Each rank's report of one scenario."""
        return [report[name] for report in self.reports]


def run_job(world_size: int, scenarios: list[str], outdir: Path) -> Job:
    """Run ``scenarios`` in one process group of ``world_size`` ranks; fail if it hangs."""
    outdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    procs = []
    logs = [outdir / f"rank{rank}.log" for rank in range(world_size)]
    for rank in range(world_size):
        argv = [str(WORKER), str(rank), str(world_size), str(outdir), ",".join(scenarios)]
        with logs[rank].open("w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        # Rank 0 finishes first; a rank kept waiting on purpose ("lost") is then released.
        procs[0].wait(JOB_TIMEOUT)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs:
            proc.wait(max(1.0, JOB_TIMEOUT - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()  # only the processes this job started
            proc.wait()
        pytest.fail(f"the job hung; logs:\n{_logs(logs)}")
    missing = [r for r in range(world_size) if not (outdir / f"rank{r}.json").exists()]
    if missing or any(proc.returncode for proc in procs):
        pytest.fail(f"ranks {missing} wrote no report; logs:\n{_logs(logs)}")
    reports = [json.loads((outdir / f"rank{r}.json").read_text()) for r in range(world_size)]
    return Job(reports, time.monotonic() - started)


def _logs(paths: list[Path]) -> str:
    return "\n".join(f"--- {path.name}\n{path.read_text()[-4000:]}" for path in paths)
