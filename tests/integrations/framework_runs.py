"""Run a framework scenario script in subprocesses, natively and with STEPSYNC_ENABLED=1.

Both runs start at once (two cores) and each is read back from its offline run file.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stepsync._scan import parse_drops
from stepsync.history import find_run_dirs, read_history

HERE = Path(__file__).parent
TIMEOUT = 240.0  # seconds; a scenario takes a few seconds, an import of torch up to ~10 s cold


@dataclass
class Run:
    """One finished scenario run: its rows, wandb's drop warnings and the process output."""

    rows: list[dict[str, Any]]
    drop_warnings: int
    output: str


def requires(*modules: str) -> pytest.MarkDecorator:
    """Skip a test module when a framework is not installed (CI installs them all).

    Checked with ``find_spec``, without importing the framework, so collection stays fast.
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


def scenario_env(out: Path, *, enabled: bool) -> dict[str, str]:
    """A clean offline environment for one run under ``out``; stepsync on or off."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STEPSYNC_", "WANDB_STEP_FIX_", "WANDB_"))
    }
    env.update(
        WANDB_MODE="offline",  # not silent: wandb < 0.18 reports drops on the terminal only
        WANDB_CONSOLE="off",
        WANDB_DIR=str(out),
        WANDB_CACHE_DIR=str(out / "cache"),
        WANDB_CONFIG_DIR=str(out / "config"),
        WANDB_DATA_DIR=str(out / "data"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",  # two runs share two cores
        PYTHONPATH=os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p),
    )
    if enabled:
        env["STEPSYNC_ENABLED"] = "1"
    return env


def run_native_and_synced(script: str, tmp: Path) -> tuple[Run, Run]:
    """Run ``script`` twice in parallel, without and with stepsync; return (native, synced)."""
    procs = {}
    for name, enabled in (("native", False), ("synced", True)):
        out = tmp / name
        out.mkdir(parents=True)
        procs[name] = (
            out,
            subprocess.Popen(
                [sys.executable, str(HERE / script), str(out)],
                env=scenario_env(out, enabled=enabled),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
    runs = {}
    for name, (out, proc) in procs.items():
        output, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"{script} ({name}) failed:\n{output[-4000:]}"
        runs[name] = read_run(out, output)
    return runs["native"], runs["synced"]


def read_run(out: Path, output: str = "") -> Run:
    """Read the single run under ``out``: history rows and wandb's drop warnings (in any
    wandb's words: wandb-core's in its internal log, older ones' on the terminal only)."""
    (run_dir,) = find_run_dirs(out)
    rows = read_history(run_dir)
    internal_logs = list(run_dir.glob("logs/debug-internal.log"))
    logged = sum(len(parse_drops(p.read_text(errors="replace"))) for p in internal_logs)
    return Run(rows=rows, drop_warnings=max(logged, len(parse_drops(output))), output=output)


def values_of(rows: list[dict[str, Any]], key: str) -> list[Any]:
    """Every value of ``key`` that wandb kept, in file order."""
    return [row[key] for row in rows if key in row]
