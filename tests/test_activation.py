"""Zero-code activation: unmodified scripts in subprocesses, judged by the offline run file.

Every scenario runs twice at once, with the variable (what stepsync must keep) and without it
(what wandb alone drops or misplaces), so each test proves the fix rather than assuming it.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _wandb_helpers import needs_several_live_runs, tables_work_offline

from stepsync.history import find_run_dirs, read_history

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"
PTH_NAME = "stepsync-activate.pth"
AXIS = "stepsync/step"
ON = {"STEPSYNC_ENABLED": "1"}
TIMEOUT = 120


@dataclass
class Outcome:
    """What one script run left behind: exit code, output, and the rows of each run it made."""

    returncode: int
    stdout: str
    stderr: str
    runs: list[list[dict[str, Any]]] = field(default_factory=list)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows of the only run the script made."""
        assert len(self.runs) == 1, f"expected one run, found {len(self.runs)}\n{self.stderr}"
        return self.runs[0]

    def run_with(self, key: str) -> list[dict[str, Any]]:
        """The rows of the one run that logged ``key``."""
        matching = [rows for rows in self.runs if any(key in row for row in rows)]
        assert len(matching) == 1, f"{len(matching)} runs logged {key!r}\n{self.stderr}"
        return matching[0]


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The test's sanitized environment (see conftest) plus ``extra``; PYTHONPATH never leaks."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"})
    env.update(extra)
    return env


class Launch:
    """One script started in a subprocess, its output folder known, its outcome read on demand."""

    def __init__(
        self,
        argv: Sequence[str],
        out: Path,
        env: Mapping[str, str],
        python: Path | None = None,
    ) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.proc = subprocess.Popen(
            [str(python or sys.executable), *argv],
            cwd=out,
            env=child_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def outcome(self) -> Outcome:
        """Wait for the process, then read every run it wrote under its folder."""
        stdout, stderr = self.proc.communicate(timeout=TIMEOUT)
        runs = []
        if (self.out / "wandb").exists():
            runs = [read_history(run_dir) for run_dir in find_run_dirs(self.out)]
        return Outcome(self.proc.returncode, stdout, stderr, runs)


def script(name: str, out: Path, *args: str, env: Mapping[str, str] = ON) -> Launch:
    """Start ``tests/scripts/<name>.py OUT ARGS...``."""
    return Launch([str(SCRIPTS / f"{name}.py"), str(out), *args], out, env)


def run_pair(
    name: str, tmp_path: Path, *args: str, env: Mapping[str, str] = ON, returncode: int = 0
) -> tuple[Outcome, Outcome]:
    """Run a script with ``env`` and without any activation variable, at the same time."""
    patched = script(name, tmp_path / "patched", *args, env=env)
    native = script(name, tmp_path / "native", *args, env={})
    results = patched.outcome(), native.outcome()
    for result in results:
        assert result.returncode == returncode, result.stderr
    return results


def run_patched(
    name: str, tmp_path: Path, *args: str, env: Mapping[str, str] = ON, returncode: int = 0
) -> Outcome:
    """Run a script with ``env`` only (its native baseline is asserted by another test)."""
    result = script(name, tmp_path / "patched", *args, env=env).outcome()
    assert result.returncode == returncode, result.stderr
    return result


def logged(rows: list[dict[str, Any]], key: str) -> list[tuple[Any, Any]]:
    """(axis step, value) of every row holding ``key``, in file order."""
    return [(row.get(AXIS), row[key]) for row in rows if key in row]


def assert_at_true_step(rows: list[dict[str, Any]], key: str, steps: range) -> None:
    """Each value of ``key`` is its own step, present once per step, in a row at that axis step."""
    pairs = logged(rows, key)
    assert sorted(value for _, value in pairs) == list(steps), pairs
    assert all(axis == value for axis, value in pairs), pairs


def site_packages(python: Path | None = None) -> list[Path]:
    """The site-packages folders of the running interpreter (or of ``python``)."""
    if python is None:
        return [Path(p) for p in site.getsitepackages()]
    code = "import site, json; print(json.dumps(site.getsitepackages()))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return [Path(p) for p in json.loads(out.stdout)]


@pytest.fixture(scope="module", autouse=True)
def activation_installed() -> None:
    """Fail clearly (not vaguely, later) when the package's .pth is missing or stale here."""
    found = [sp / PTH_NAME for sp in site_packages() if (sp / PTH_NAME).exists()]
    if not found:
        pytest.fail(f"{PTH_NAME} is not installed for {sys.executable}: run `pip install -e .`")
    if found[0].read_text() != (ROOT / PTH_NAME).read_text():
        pytest.fail(f"{found[0]} differs from the repository's: reinstall with `pip install -e .`")


def imported_at_startup(env: Mapping[str, str], python: Path | None = None) -> Outcome:
    """``python -X importtime -c pass``: the modules imported, one per stdout line."""
    proc = subprocess.run(
        [str(python or sys.executable), "-X", "importtime", "-c", "pass"],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    modules = []
    other = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.append(line.rsplit("|", 1)[1].strip())
        else:
            other.append(line)
    return Outcome(proc.returncode, "\n".join(modules), "\n".join(other))


def heavy(modules: str) -> list[str]:
    """The imported modules that belong to wandb, wrapt or stepsync (the boot module aside)."""
    return [
        m
        for m in modules.splitlines()
        if m.split(".")[0] in {"wandb", "wrapt", "stepsync"} or m.startswith("_wrapt")
    ]


class TestStartupCost:
    """The .pth runs in every interpreter of the environment: disabled, it must import nothing."""

    def test_disabled_imports_nothing(self) -> None:
        """With no variable set, start-up imports no wandb, wrapt, stepsync, not even the boot."""
        result = imported_at_startup({})
        assert result.returncode == 0
        assert "site" in result.stdout.splitlines()  # the parse saw real importtime output
        assert heavy(result.stdout) == []
        assert "_stepsync_boot" not in result.stdout.splitlines()
        assert result.stderr == ""

    def test_enabled_imports_only_the_boot_module(self) -> None:
        """Enabled, start-up loads the boot module (the .pth is live) and still nothing heavy."""
        result = imported_at_startup(ON)
        assert "_stepsync_boot" in result.stdout.splitlines()
        assert heavy(result.stdout) == []
        assert result.stderr == ""

    @pytest.mark.parametrize("value", ["", "0", "false", "OFF"])
    def test_off_values_are_silent(self, value: str) -> None:
        """Blank and recognised "off" values neither warn nor import anything heavy."""
        result = imported_at_startup({"STEPSYNC_ENABLED": value})
        assert heavy(result.stdout) == []
        assert result.stderr == ""


PROBE = (
    "import sys, wandb, json; s = sys.modules.get('stepsync');"
    "print(json.dumps(bool(s and s.is_patched())))"
)
ENV_CASES: dict[str, tuple[dict[str, str], bool, bool]] = {
    # name: (environment, patched?, warns?)
    "1": ({"STEPSYNC_ENABLED": "1"}, True, False),
    "true": ({"STEPSYNC_ENABLED": "true"}, True, False),
    "YES": ({"STEPSYNC_ENABLED": "YES"}, True, False),
    "on": ({"STEPSYNC_ENABLED": "on"}, True, False),
    "padded On": ({"STEPSYNC_ENABLED": " On "}, True, False),
    "legacy true": ({"WANDB_STEP_FIX_ENABLED": "true"}, True, False),
    "legacy TRUE": ({"WANDB_STEP_FIX_ENABLED": "TRUE"}, True, False),
    "unset": ({}, False, False),
    "0": ({"STEPSYNC_ENABLED": "0"}, False, False),
    "explicit off beats legacy": (
        {"STEPSYNC_ENABLED": "false", "WANDB_STEP_FIX_ENABLED": "true"},
        False,
        False,
    ),
    "garbage": ({"STEPSYNC_ENABLED": "enable-please"}, False, True),
    "legacy garbage": ({"WANDB_STEP_FIX_ENABLED": "2"}, False, True),
}


@pytest.fixture(scope="class")
def env_probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Import wandb under every ENV_CASES environment, all processes at once (2 cores)."""
    base = tmp_path_factory.mktemp("env-probes")
    launches = {
        name: Launch(["-c", PROBE], base / f"case{i}", env)
        for i, (name, (env, _, _)) in enumerate(ENV_CASES.items())
    }
    return {name: launch.outcome() for name, launch in launches.items()}


class TestEnvironmentValues:
    """Each value of STEPSYNC_ENABLED / WANDB_STEP_FIX_ENABLED does what the README says."""

    @pytest.mark.parametrize("case", list(ENV_CASES))
    def test_value(self, case: str, env_probes: dict[str, Outcome]) -> None:
        """On values patch at `import wandb`; off values don't; garbage warns once, no crash."""
        _, should_patch, should_warn = ENV_CASES[case]
        result = env_probes[case]
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) is should_patch
        warnings = [line for line in result.stderr.splitlines() if line.startswith("stepsync:")]
        if should_warn:
            assert len(warnings) == 1, result.stderr
            assert "NOT patched" in warnings[0]
            assert "expected 1, true, yes or on" in warnings[0]
        else:
            assert warnings == [], result.stderr

    def test_legacy_variable_keeps_data(self, tmp_path: Path) -> None:
        """WANDB_STEP_FIX_ENABLED=true (the seed tool's switch) keeps what plain wandb drops.

        The same script's native drops are asserted by TestScenarios.test_finish_and_exit_flush.
        """
        env = {"WANDB_STEP_FIX_ENABLED": "true"}
        patched = run_patched("late_callback", tmp_path, "finish", env=env)
        assert_at_true_step(patched.rows, "callback/step", range(8))


class TestAvailabilityChecks:
    """Frameworks probe for wandb with importlib.util.find_spec before importing it."""

    def test_find_spec_before_import_still_patches(self, tmp_path: Path) -> None:
        """`find_spec("wandb")` then `import wandb` (transformers, accelerate) is still patched."""
        probe = "import importlib.util; importlib.util.find_spec('wandb'); " + PROBE
        result = Launch(["-c", probe], tmp_path, ON).outcome()
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1]) is True


class TestHookNeverBreaksImport:
    """A failing stepsync must not break `import wandb`: one stderr line, wandb works natively."""

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ("def patch():\n    raise RuntimeError('boom')\n", "RuntimeError: boom"),
            ("raise ImportError('broken install')\n", "ImportError: broken install"),
            ("x = 1\n", "has no patch()"),
        ],
    )
    def test_failure_is_reported_once(self, tmp_path: Path, body: str, message: str) -> None:
        """A stand-in stepsync that fails is reported once on stderr; `import wandb` succeeds."""
        fake = tmp_path / "fake" / "stepsync"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text(body)
        env = {**ON, "PYTHONPATH": str(fake.parent)}
        code = "import wandb; import wandb.sdk.wandb_run; print(wandb.init.__module__)"
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env={**child_env({}), **env},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().startswith("wandb")
        lines = [line for line in proc.stderr.splitlines() if line.startswith("stepsync:")]
        assert len(lines) == 1, proc.stderr
        assert message in lines[0]
        assert "activation failed" in lines[0]


class TestScenarios:
    """Unmodified scripts with STEPSYNC_ENABLED=1 keep what the same scripts lose without it."""

    def test_hugging_face_callback_at_global_step(self, tmp_path: Path) -> None:
        """HF pattern: a callback at step=global_step after step-less trainer rows is kept."""
        patched, native = run_pair("hf_trainer", tmp_path)
        rows = patched.rows
        assert_at_true_step(rows, "custom/seen_step", range(1, 9))
        for key in ("train/loss", "eval/loss"):
            pairs = [(r["train/global_step"], r[key]) for r in rows if key in r]
            assert len(pairs) == 8, pairs
            scale = 1.0 if key == "train/loss" else 2.0
            assert all(abs(value - scale / step) < 1e-9 for step, value in pairs), pairs
        assert len(logged(native.rows, "custom/seen_step")) < 8

    @tables_work_offline
    def test_trl_step_less_completions_table(self, tmp_path: Path) -> None:
        """TRL pattern: every completions Table lands, and the step=global_step callback too."""
        patched, native = run_pair("trl_completions", tmp_path)
        tables = [row["completions"] for row in patched.rows if "completions" in row]
        assert len(tables) == 6
        assert all(t["_type"] == "table-file" and t["nrows"] == 1 for t in tables), tables
        assert_at_true_step(patched.rows, "reward_model/step", range(1, 7))
        assert len(logged(patched.rows, "train/reward")) == 6
        assert len(logged(native.rows, "reward_model/step")) < 6

    def test_resume_replay(self, tmp_path: Path) -> None:
        """Steps 6..11 logged again after 0..9: every replayed value is kept at its true step."""
        patched, native = run_pair("resume_replay", tmp_path)
        newest = {step: (200 if step >= 6 else 100) + step for step in range(12)}
        pairs = logged(patched.rows, "loss")
        for step, value in newest.items():
            assert (step, value) in pairs, (step, value, pairs)
        native_values = {value for _, value in logged(native.rows, "loss")}
        assert not {206, 207, 208} <= native_values

    def test_watch_style_log_inside_scope(self, tmp_path: Path) -> None:
        """`run._log(commit=False)` inside step_scope(s) lands in step s's row, with its loss."""
        patched, native = run_pair("watch_scope", tmp_path)
        rows = patched.rows
        for step in range(6):
            holding = [r for r in rows if r.get("gradients/norm") == step]
            assert len(holding) == 1, (step, rows)
            row = holding[0]
            assert row[AXIS] == step
            assert row["loss"] == step
            assert row["gradients/w"]["_type"] == "histogram"
        native_placement = {
            r["gradients/norm"]: r["_step"] for r in native.rows if "gradients/norm" in r
        }
        assert native_placement != {step: step for step in range(6)}

    @pytest.mark.parametrize(("mode", "returncode"), [("finish", 0), ("exit", 0), ("raise", 1)])
    def test_finish_and_exit_flush(self, tmp_path: Path, mode: str, returncode: int) -> None:
        """Buffered steps land at finish(), at exit without finish(), and after a crash."""
        if mode == "finish":  # the native baseline once: wandb drops the same values either way
            patched, native = run_pair("late_callback", tmp_path, mode)
            assert len(logged(native.rows, "callback/step")) < 8
        else:
            patched = run_patched("late_callback", tmp_path, mode, returncode=returncode)
        rows = patched.rows
        assert_at_true_step(rows, "callback/step", range(8))
        assert_at_true_step(rows, "train/loss", range(8))
        axes = [row[AXIS] for row in rows if AXIS in row]
        assert sorted(axes) == list(range(8)), "one merged row per step, no late rows"

    @needs_several_live_runs
    def test_two_runs_in_one_process(self, tmp_path: Path) -> None:
        """With reinit="create_new", each run keeps its own late values and only its own keys."""
        patched, native = run_pair("two_runs", tmp_path)
        assert len(patched.runs) == 2
        for name, other in (("first", "second"), ("second", "first")):
            rows = patched.run_with(f"{name}/loss")
            assert_at_true_step(rows, f"{name}/loss", range(6))
            assert_at_true_step(rows, f"{name}/late", range(6))
            assert not any(key.startswith(f"{other}/") for row in rows for key in row)
            assert len(logged(native.run_with(f"{name}/loss"), f"{name}/late")) < 6

    def test_stepsync_imported_before_wandb(self, tmp_path: Path) -> None:
        """A script importing stepsync first (for @logs_metrics) is patched by the variable too."""
        patched, native = run_pair("stepsync_first", tmp_path)
        assert_at_true_step(patched.rows, "eval/step", range(6))
        assert len(logged(native.rows, "eval/step")) < 6


class TestExplicitApi:
    """`stepsync.patch()` without the variable (python -S, frozen apps), and `unpatch()`."""

    def test_patch_before_and_after_init(self, tmp_path: Path) -> None:
        """patch() before wandb.init and after it (wandb.log re-pointed) keep the late values."""
        launches = {
            when: script("explicit_patch", tmp_path / when, when, env={})
            for when in ("before-init", "after-init", "never")
        }
        outcomes = {when: launch.outcome() for when, launch in launches.items()}
        for outcome in outcomes.values():
            assert outcome.returncode == 0, outcome.stderr
        for when in ("before-init", "after-init"):
            assert_at_true_step(outcomes[when].rows, "callback/step", range(6))
            assert_at_true_step(outcomes[when].rows, "train/loss", range(6))
        assert len(logged(outcomes["never"].rows, "callback/step")) < 6

    def test_unpatch_restores_identity(self, tmp_path: Path) -> None:
        """unpatch() after patch() twice restores every attribute; captured methods act natively."""
        result = script("unpatch_identity", tmp_path, env={}).outcome()
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert "log" in report["changed_by_patch"]
        assert "_log" in report["changed_by_patch"]
        assert report["not_restored"] == []
        assert report["is_patched_after"] is False
        keys = {key for row in result.rows for key in row}
        assert {"native/a", "native/b"} <= keys
        assert "native/late" not in keys, "a captured bound method must act natively"
        assert "native/late_module" not in keys, "wandb.log captured while patched acts natively"
        assert AXIS not in keys


def isolation() -> list[str]:
    """pip options: build here when the backend (hatchling) is installed, else pip fetches it."""
    try:
        import hatchling  # noqa: F401
    except ImportError:
        return []
    return ["--no-build-isolation"]


def build_wheel(out: Path) -> Path:
    """Build the project's wheel into ``out`` with pip, as an installer would."""
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation()]
    subprocess.run(
        [*pip, "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    (wheel,) = out.glob("stepsync-*.whl")
    return wheel


def fresh_venv(path: Path) -> Path:
    """A new virtualenv whose only packages come from pip (below) plus the test env's deps.

    Its own site-packages is searched first; the dependencies (wandb, wrapt, ...) come from
    this environment's site-packages through a plain path line, which runs no .pth of theirs.
    """
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=TIMEOUT
    )
    python = path / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    (own,) = site_packages(python)
    deps = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    (own / "_test_dependencies.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    return python


def pip_install(python: Path, *args: str) -> None:
    """Install into the venv of ``python`` with this environment's pip (no dependencies)."""
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q"]
    subprocess.run([*cmd, *isolation(), *args], check=True, capture_output=True, timeout=TIMEOUT)


WHERE = (
    "import json, sys, wandb, _stepsync_boot, stepsync;"
    "print(json.dumps([stepsync.is_patched(), stepsync.__file__, _stepsync_boot.__file__]))"
)


@pytest.mark.slow
class TestInstalledPackage:
    """Installed as a user would: a built wheel, and `pip install -e`, each in a fresh venv."""

    @pytest.mark.parametrize("kind", ["wheel", "editable"])
    def test_unmodified_script_in_fresh_venv(self, tmp_path: Path, kind: str) -> None:
        """STEPSYNC_ENABLED=1 patches an unmodified script in a fresh venv; unset, nothing loads."""
        python = fresh_venv(tmp_path / "venv")
        if kind == "wheel":
            pip_install(python, str(build_wheel(tmp_path / "dist")))
            home = site_packages(python)[0]
        else:
            pip_install(python, "-e", str(ROOT))
            home = ROOT
        (own,) = site_packages(python)
        assert (own / PTH_NAME).exists()

        where = Launch(["-c", WHERE], tmp_path / "where", ON, python=python)
        run = Launch(
            [str(SCRIPTS / "late_callback.py"), str(tmp_path / "run"), "exit"],
            tmp_path / "run",
            ON,
            python=python,
        )
        located = where.outcome()
        assert located.returncode == 0, located.stderr
        is_patched, package_file, boot_file = json.loads(located.stdout)
        assert is_patched is True
        assert Path(package_file).resolve().is_relative_to(home.resolve() / "stepsync")
        assert Path(boot_file).resolve() == home.resolve() / "_stepsync_boot.py"

        outcome = run.outcome()
        assert outcome.returncode == 0, outcome.stderr
        assert_at_true_step(outcome.rows, "callback/step", range(8))

        startup = imported_at_startup({}, python=python)
        assert startup.returncode == 0
        assert heavy(startup.stdout) == []
        assert "_stepsync_boot" not in startup.stdout.splitlines()
        assert "_stepsync_boot" in imported_at_startup(ON, python=python).stdout.splitlines()
