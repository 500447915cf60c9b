"""Interpreter start-up cost of ``stepsync-activate.pth``, which runs in every Python process.

Builds the wheel, installs it with pip into fresh venvs that differ only by the .pth (one with
the shipped .pth, two without it as an A/A noise control, one whose .pth is the unguarded
``import _stepsync_boot``), then times ``python -c pass``
(and ``python -c "import wandb"``) in them, interleaved, order shuffled each repetition, and
reports the ratios of the medians, of wall time and of CPU time. Goal: unset <= 1.02x.

    python tests/benchmarks/bench_startup.py [--repeat 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PTH_NAME = "stepsync-activate.pth"
ACTIVATION_VARIABLES = ("STEPSYNC_ENABLED", "WANDB_STEP_FIX_ENABLED")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without activation variables or PYTHONPATH, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ACTIVATION_VARIABLES and not k.startswith("PYTHON")
    }
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    env.update(extra or {})
    return env


def build_wheel(out: Path) -> Path:
    """Build the project's wheel with pip (in this environment when hatchling is here)."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out)]
    try:
        import hatchling  # noqa: F401
    except ImportError:
        pass
    else:
        cmd.append("--no-build-isolation")
    subprocess.run([*cmd, str(ROOT)], check=True, capture_output=True)
    (wheel,) = out.glob("stepsync-*.whl")
    return wheel


def make_venv(path: Path, wheel: Path, pth: str | None, *, other_pth: bool = False) -> Path:
    """A fresh venv with the wheel installed; ``pth`` replaces the .pth's text (None: no .pth).

    ``other_pth`` adds another package's import-line .pth (``import sys``), as most real
    environments have one (setuptools' ``distutils-precedence.pth``, virtualenv's
    ``_virtualenv.pth``): the interpreter's first compile of source code is then paid already.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q"]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    code = "import site; print(site.getsitepackages()[0])"
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    own = Path(found.stdout.strip())
    # wandb and its dependencies from this environment (a plain path line runs none of their .pth).
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (own / "_bench_dependencies.pth").write_text("\n".join(deps) + "\n")
    if other_pth:
        (own / "_another_package.pth").write_text("import sys\n")
    if pth is None:
        (own / PTH_NAME).unlink()
    else:
        (own / PTH_NAME).write_text(pth)
    return python


def spawn(argv: list[str], env: Mapping[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one child process from spawn to exit.

    CPU time (user + system, from the kernel's accounting of the child) barely moves when other
    processes load the machine; wall time is what a user waits, noise included.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, argv)
    return wall, usage.ru_utime + usage.ru_stime


Timings = dict[str, dict[str, list[float]]]  # case -> {"wall": [...], "cpu": [...]}


def measure(cases: Mapping[str, tuple[Path, Mapping[str, str]]], code: str, repeat: int) -> Timings:
    """Time ``python -c code`` for every case, once per repetition each, in shuffled order."""
    times: Timings = {name: {"wall": [], "cpu": []} for name in cases}
    order = list(cases)
    for python, env in cases.values():  # warm the page cache and the pyc files
        spawn([str(python), "-c", code], env)
    for _ in range(repeat):
        random.shuffle(order)
        for name in order:
            python, env = cases[name]
            wall, cpu = spawn([str(python), "-c", code], env)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
    return times


def ratios(times: Timings, name: str, base: str) -> dict[str, float]:
    """``name / base``: ratio of the medians, of wall and of CPU time."""
    return {
        kind: round(statistics.median(times[name][kind]) / statistics.median(times[base][kind]), 4)
        for kind in ("wall", "cpu")
    }


def main() -> None:
    """Build, install, time, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300, help="repetitions of `-c pass`")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        base = Path(tmp)
        wheel = build_wheel(base / "dist")
        shipped = (ROOT / PTH_NAME).read_text()
        on = clean_env({"STEPSYNC_ENABLED": "1"})
        off = clean_env()
        bare = make_venv(base / "bare", wheel, shipped)
        bare_without = make_venv(base / "bare-without", wheel, None)
        cases = {
            "bare: without .pth": (bare_without, off),
            "bare: without .pth, A/A copy": (make_venv(base / "aa", wheel, None), off),
            "bare: installed, unset": (bare, off),
            "bare: installed, enabled": (bare, on),
            "bare: unguarded .pth, unset": (
                make_venv(base / "unguarded", wheel, "import _stepsync_boot\n"),
                off,
            ),
            "typical: without .pth": (
                make_venv(base / "typical-without", wheel, None, other_pth=True),
                off,
            ),
            "typical: installed, unset": (
                make_venv(base / "typical", wheel, shipped, other_pth=True),
                off,
            ),
        }
        startup = measure(cases, "pass", args.repeat)
        wandb_import = measure(
            {"import wandb, unset": (bare, off), "import wandb, enabled": (bare, on)},
            "import wandb",
            max(10, args.repeat // 15),
        )

    compared = {
        "bare venv, unset / without .pth (goal <= 1.02)": (
            startup,
            "bare: installed, unset",
            "bare: without .pth",
        ),
        "A/A control, identical venvs (noise)": (
            startup,
            "bare: without .pth, A/A copy",
            "bare: without .pth",
        ),
        "typical venv, unset / without .pth": (
            startup,
            "typical: installed, unset",
            "typical: without .pth",
        ),
        "bare venv, enabled / without .pth": (
            startup,
            "bare: installed, enabled",
            "bare: without .pth",
        ),
        "unguarded `import _stepsync_boot` .pth, unset": (
            startup,
            "bare: unguarded .pth, unset",
            "bare: without .pth",
        ),
        "import wandb, enabled / unset": (
            wandb_import,
            "import wandb, enabled",
            "import wandb, unset",
        ),
    }
    results = {
        "repeat": args.repeat,
        "median_ms": {
            name: {kind: round(statistics.median(t[kind]) * 1e3, 3) for kind in ("wall", "cpu")}
            for name, t in {**startup, **wandb_import}.items()
        },
        "ratios": {label: ratios(t, a, b) for label, (t, a, b) in compared.items()},
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"python -c pass ({args.repeat} times each; import wandb fewer), medians:")
    print(f"  {'':<46} {'wall ms':>9} {'CPU ms':>9}")
    for name, ms in results["median_ms"].items():
        print(f"  {name:<46} {ms['wall']:9.2f} {ms['cpu']:9.2f}")
    print("ratios of the medians (CPU time is the steadier one on a busy machine):")
    print(f"  {'':<46} {'wall':>9} {'CPU':>9}")
    for name, value in results["ratios"].items():
        print(f"  {name:<46} {value['wall']:8.3f}x {value['cpu']:8.3f}x")


if __name__ == "__main__":
    main()
