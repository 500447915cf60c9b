"""``stepsync demo``: one simulated training job, run natively and with stepsync, compared.

The job (``_demo_job``) is the same code in both runs. Each run happens in its own child process
(``python -m stepsync._demo_job``): wandb keeps
process-wide state (its first ``WANDB_DIR``, the service connection, ``wandb.log`` bound to the
live run), so two runs in one process could influence each other, and a child can be given a
clean environment (offline, temporary folders) without touching the caller's. The stepsync child
calls ``stepsync.patch()`` itself rather than relying on ``STEPSYNC_ENABLED``, so the demo does
not depend on how the package was installed. Both children run at the same time.

What is counted: a *value* is what one source logged for one key at one logical step; when
sources write the same key for the same step, the one with the lowest priority number is the
value meant (one row per step can show one). A value is *kept* when a history row of its step
holds it (a row's step is ``stepsync/step`` if present, else wandb's ``_step``), *at a wrong
step* when it is only in rows of other steps, and *dropped* when wandb did not record it at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stepsync._demo_job import AXIS_KEY, CALLBACK_KEY, VARIANTS
from stepsync._scan import ANSI_CODES

__all__ = ["DemoResult", "run_demo", "run_demo_cli"]

MIN_STEPS = 30
_CHILD_TIMEOUT = 300.0
#: wandb's warnings about steps (its drop warnings); wandb 0.17 also prints a notice per run.
_WANDB_WARNING = re.compile(r"wandb: WARNING.*\bstep\b", re.IGNORECASE)


# ------------------------------------------------------------------- running and reading


@dataclass
class DemoResult:
    """The numbers of one variant."""

    values_logged: int
    values_kept: int
    dropped: int
    wrong_step: int
    rows: int
    log_calls: int
    wandb_calls: int
    drops_reported: int
    warnings: int
    seconds: float
    run_dir: str | None  # None once the temporary folder is removed
    callback_logged: list[tuple[int, int, float]]  # (attempt, step, value), for the plot
    callback_kept: list[tuple[int, int, float]]

    @property
    def values_lost(self) -> int:
        """Values not kept at their step: dropped plus at a wrong step."""
        return self.values_logged - self.values_kept

    def to_json(self) -> dict[str, Any]:
        """The JSON form; the callback series are left out (they are for the plot)."""
        document = asdict(self)
        del document["callback_logged"], document["callback_kept"]
        document["values_lost"] = self.values_lost
        return document


class DemoError(RuntimeError):
    """A demo run could not be completed (the message says which and why)."""


def _child_env(workdir: Path) -> dict[str, str]:
    """The caller's environment without any wandb or stepsync setting, offline, in ``workdir``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("WANDB_", "STEPSYNC_"))
    }
    env["WANDB_MODE"] = "offline"
    env["WANDB_DIR"] = str(workdir)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        folder = workdir / ".wandb-home" / name.removeprefix("WANDB_").lower()
        folder.mkdir(parents=True, exist_ok=True)
        env[name] = str(folder)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_demo(steps: int, workdir: str | os.PathLike[str]) -> dict[str, DemoResult]:
    """Run both variants in ``workdir`` (in parallel child processes) and compare them."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {steps!r}")
    if steps < MIN_STEPS:
        raise ValueError(f"steps must be >= {MIN_STEPS}, got {steps}")
    root = Path(workdir)
    children = {}
    for variant in VARIANTS:
        folder = root / variant
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / "demo-result.json"
        command = [sys.executable, "-m", "stepsync._demo_job", "--variant", variant,
                   "--steps", str(steps), "--dir", str(folder), "--out", str(out)]  # fmt: skip
        process = subprocess.Popen(
            command,
            env=_child_env(folder),
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        children[variant] = (process, out)
    results = {}
    for variant, (process, out) in children.items():
        try:
            stdout, stderr = process.communicate(timeout=_CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise DemoError(f"the {variant} run did not finish in {_CHILD_TIMEOUT:.0f} s") from None
        if process.returncode != 0 or not out.is_file():
            last = (stderr.strip().splitlines() or ["(no output)"])[-1]
            raise DemoError(f"the {variant} run failed (exit {process.returncode}): {last}")
        document = json.loads(out.read_text(encoding="utf-8"))
        results[variant] = _evaluate(document, ANSI_CODES.sub("", stdout + stderr))
    return results


def _evaluate(document: Mapping[str, Any], console: str) -> DemoResult:
    """Read a finished run back and count what wandb kept of what the job logged."""
    from stepsync._scan import parse_drops, scan_run
    from stepsync.history import read_history

    run_dir = document["run_dir"]
    rows = read_history(run_dir)
    meant = _values_meant(document["values"])
    at_step: dict[tuple[Any, str], list[Any]] = {}
    anywhere: dict[str, list[Any]] = {}
    for row in rows:
        step = row.get(AXIS_KEY, row.get("_step"))
        for key, value in row.items():
            if not key.startswith("_") and key != AXIS_KEY:
                at_step.setdefault((step, key), []).append(value)
                anywhere.setdefault(key, []).append(value)
    kept = wrong_step = 0
    callback_kept: list[tuple[int, int, float]] = []
    for (attempt, step, key), value in meant.items():
        if value in at_step.get((step, key), ()):
            kept += 1
            if key == CALLBACK_KEY:
                callback_kept.append((attempt, step, value))
        elif value in anywhere.get(key, ()):
            wrong_step += 1
    callback_logged = sorted(
        (attempt, step, value)
        for (attempt, step, key), value in meant.items()
        if key == CALLBACK_KEY
    )
    stats = document["stats"]
    report = scan_run(run_dir)
    # wandb 0.15.10 to 0.17 report drops on the terminal only (the scan says "unknown").
    drops = parse_drops(console) if report.status == "unknown" else report.drops
    return DemoResult(
        values_logged=len(meant),
        values_kept=kept,
        dropped=len(meant) - kept - wrong_step,
        wrong_step=wrong_step,
        rows=len(rows),
        log_calls=document["log_calls"],
        wandb_calls=stats["wandb_calls"] if stats else document["log_calls"],
        drops_reported=len(drops),
        warnings=len(_WANDB_WARNING.findall(console)),
        seconds=round(document["seconds"], 3),
        run_dir=run_dir,
        callback_logged=callback_logged,
        callback_kept=sorted(callback_kept),
    )


def _values_meant(values: Sequence[Sequence[Any]]) -> dict[tuple[int, int, str], Any]:
    """(attempt, step, key) -> the value meant: lowest priority number, then the later write."""
    meant: dict[tuple[int, int, str], tuple[int, Any]] = {}
    for attempt, step, key, value, priority in values:
        slot = (attempt, step, key)
        if slot not in meant or priority <= meant[slot][0]:
            meant[slot] = (priority, value)
    return {slot: value for slot, (_, value) in meant.items()}


# ---------------------------------------------------------------------------- output


def render(results: Mapping[str, DemoResult], steps: int, wandb_version: str | None) -> str:
    """The table for people."""
    from stepsync._table import render_table

    native, synced = results["native"], results["stepsync"]
    lines: list[tuple[str, Callable[[DemoResult], object]]] = [
        ("values logged", lambda r: r.values_logged),
        ("values kept at their step", lambda r: r.values_kept),
        ("values lost", lambda r: r.values_lost),
        ("  dropped by wandb", lambda r: r.dropped),
        ("  kept at a wrong step", lambda r: r.wrong_step),
        ("history rows", lambda r: r.rows),
        ("wandb.log calls made by the job", lambda r: r.log_calls),
        ("log calls reaching wandb", lambda r: r.wandb_calls),
        ("log calls wandb dropped", lambda r: r.drops_reported),
        ("step warnings printed by wandb", lambda r: r.warnings),
        ("job seconds (incl. finish)", lambda r: f"{r.seconds:.2f}"),
    ]
    table = render_table(
        ("", "native wandb", "with stepsync"),
        [(label, get(native), get(synced)) for label, get in lines],
        right=(1, 2),
    )
    version = f"wandb {wandb_version}, " if wandb_version else ""
    head = (
        f"stepsync demo: {steps} training steps, 5 sources ({version}offline, same job both times)"
    )
    return f"{head}\n\n{table}"


def plot(results: Mapping[str, DemoResult], file: str | os.PathLike[str]) -> None:
    """Draw the callback metric over the logical step, native beside stepsync."""
    try:
        import matplotlib
    except ImportError:
        raise DemoError("--plot needs matplotlib: pip install 'stepsync[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 3.9), sharey=True, layout="constrained")
    titles = {"native": "native wandb", "stepsync": "with stepsync"}
    for ax, variant in zip(axes, VARIANTS, strict=True):
        result = results[variant]
        first_pass = [
            (step, value) for attempt, step, value in result.callback_logged if not attempt
        ]
        ax.plot(
            *zip(*first_pass, strict=True), color="0.82", linewidth=1.2, label="logged", zorder=1
        )
        kept = set(result.callback_kept)
        lost = [point for point in result.callback_logged if point not in kept]
        if kept:
            _, kept_x, kept_y = zip(*sorted(kept), strict=True)
            ax.scatter(kept_x, kept_y, s=10, color="tab:blue", label="kept by wandb", zorder=3)
        if lost:
            _, lost_x, lost_y = zip(*lost, strict=True)
            ax.scatter(lost_x, lost_y, s=16, marker="x", color="tab:red", linewidths=1,
                       label="lost (dropped, or not at its step)", zorder=2)  # fmt: skip
        ax.set_title(
            f"{titles[variant]}: {len(kept)} of {len(result.callback_logged)} values kept",
            fontsize=11,
        )
        ax.set_xlabel("logical step (global_step)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(CALLBACK_KEY)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False, fontsize=9)
    try:
        figure.savefig(file, dpi=120)
    except OSError as exc:
        raise DemoError(f"cannot write {file}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)


def run_demo_cli(*, steps: int, as_json: bool, keep: str | None, plot_file: str | None) -> int:
    """``stepsync demo``: run, print the table or JSON, optionally plot; returns the exit status."""
    problem = _argument_problem(steps, keep, plot_file)
    if problem:
        print(f"stepsync demo: error: {problem}", file=sys.stderr)
        return 2
    workdir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="stepsync-demo-"))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        results = run_demo(steps, workdir)
        if plot_file is not None:
            plot(results, plot_file)
    except (DemoError, OSError) as exc:
        print(f"stepsync demo: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    for result in results.values():
        result.run_dir = result.run_dir if keep else None
    if as_json:
        print(json.dumps({variant: r.to_json() for variant, r in results.items()}, indent=2))
        return 0
    print(render(results, steps, _wandb_version()))
    if keep:
        print(f"\nBoth runs are in {workdir}; `stepsync scan {workdir}` lists what wandb dropped.")
    if plot_file is not None:
        print(f"\nPlot written to {plot_file}.")
    return 0


def _argument_problem(steps: int, keep: str | None, plot_file: str | None) -> str | None:
    """Why the arguments cannot work, checked before the runs (they take seconds)."""
    import importlib.util

    if steps < MIN_STEPS:
        return f"--steps must be >= {MIN_STEPS}"
    if keep and Path(keep).exists() and (not Path(keep).is_dir() or any(Path(keep).iterdir())):
        return f"--keep {keep}: not an empty folder"
    if plot_file is None:
        return None
    if importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib: pip install 'stepsync[plot]'"
    folder = Path(plot_file).parent
    if not folder.is_dir():
        return f"cannot write {plot_file}: no folder {folder}"
    return None


def _wandb_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wandb")
    except PackageNotFoundError:
        return None
