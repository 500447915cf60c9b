"""Smoke test of the benchmark scripts: each runs at a tiny ``--quick`` size and prints figures.

Not a timed test: the figures are printed, never compared with their goals here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _wandb_helpers import needs_several_live_runs

BENCHMARKS = Path(__file__).parent / "benchmarks"


class QuickRun:
    """One ``--quick`` run of a benchmark script: its output, figures and working directory."""

    def __init__(self, script: str, cwd: Path, *extra: str) -> None:
        out = cwd / "figures.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "STEPSYNC_"))}
        done = subprocess.run(
            [
                sys.executable,
                str(BENCHMARKS / script),
                "--quick",
                "--reps",
                "1",
                "--json",
                str(out),
                *extra,
            ],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        self.stdout = done.stdout
        self.files = sorted(p.name for p in cwd.iterdir())
        self.figures = {f["figure"]: f for f in json.loads(out.read_text())["figures"]}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, QuickRun]:
    """Both scripts, run once for the whole module (each takes a few seconds); one pinned."""
    return {
        script: QuickRun(script, tmp_path_factory.mktemp(script.removesuffix(".py")), *extra)
        for script, extra in (("bench_core.py", ("--pin",)), ("bench_perf.py", ()))
    }


# The benchmarks hold a native and a stepsync run live side by side (reinit="create_new").
@needs_several_live_runs
class TestBenchmarkScripts:
    def test_core_prints_b1_b1b_b2_as_ratios(self, quick):
        """bench_core.py prints B1, B1b and B2 as finite positive ratios with their goals."""
        run = quick["bench_core.py"]
        for name, goal in (("B1", 0.36), ("B1b", 1.05), ("B2", 0.01)):
            assert f"{name} " in run.stdout
            assert math.isfinite(run.figures[name]["ratio"])
            assert run.figures[name]["ratio"] > 0
            assert run.figures[name]["goal"] == goal
        assert "# command: python" in run.stdout
        for name in ("B1p", "B1bp", "B1r", "B1aa", "B1f"):  # reported without a goal
            assert run.figures[name]["goal"] is None
            assert math.isfinite(run.figures[name]["ratio"])
        assert "B1b gap:" in run.stdout

    def test_pin_puts_wandb_core_on_its_own_cpus(self, quick):
        """``--pin`` reports where it put this process and wandb-core (or why it could not)."""
        run = quick["bench_core.py"]
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        if len(cpus) < 2:
            assert "# not pinned" in run.stdout
        else:
            assert "# pinned: this process on CPU" in run.stdout

    def test_perf_prints_every_figure(self, quick):
        """bench_perf.py prints B1 to B7; B3 in KB, B4 with 0 values lost, B5 synchronous."""
        run = quick["bench_perf.py"]
        found = run.figures
        assert set(found) >= {"B1", "B1b", "B2", "B3", "B4", "B5", "B6a", "B6b", "B7a", "B7e"}
        assert 0 < found["B3"]["bytes"] < 10**7
        assert found["B4"]["lost"] == 0  # exactness holds at any size, unlike timings
        assert found["B4"]["calls_per_s"] > 0
        assert found["B5"]["ok"] is True  # the scope exit called wandb on the same thread
        assert "calls/s" in run.stdout
        assert "KB" in run.stdout

    def test_perf_prints_capture_cost_as_ratios(self, quick):
        """bench_perf.py prints B7a to B7e: capture's cost per call over one native ``run.log``."""
        run = quick["bench_perf.py"]
        for name in ("B7a", "B7b", "B7c", "B7d", "B7e"):  # reported without a goal
            assert f"{name} " in run.stdout
            assert math.isfinite(run.figures[name]["ratio"])
            assert run.figures[name]["ratio"] > 0
            assert run.figures[name]["goal"] is None
        assert "per native run.log call" in run.stdout
        assert "histogram" in run.stdout  # the note on arrays over 32 elements

    @pytest.mark.parametrize("script", ["bench_core.py", "bench_perf.py"])
    def test_scripts_leave_no_files_behind(self, quick, script):
        """A benchmark writes its wandb runs to a temp folder, not into the working directory."""
        assert quick[script].files == ["figures.json"]
