"""Find the log calls wandb dropped in existing runs, from what wandb itself wrote about them.

wandb drops a ``log`` call whose ``step`` is below its current step and says so in a place that
depends on its version (checked by running each version offline):

* wandb-core (0.18 and later; 0.17 with ``wandb.require("core")``): one JSON line per drop in the
  run's ``logs/debug-internal.log``, ``{"level":"WARN","msg":"handler: ignoring partial history
  record","step":3,"current":5}``, and on the console ``wandb: WARNING Tried to log to step 3 that
  is less than the current step 5. ...``. The console copy (``files/output.log``, and the run
  file's output records) misses lines when drops come in bursts; the debug log has them all.
  Neither shows the dropped keys.
* Python backend 0.12.21 to 0.15.9: only ``logs/debug-internal.log``,
  ``WARNING HandlerThread:... Step 3 < 5. Dropping entry: {'b': 2, '_timestamp': ...}.``
* Python backend 0.15.10 to 0.17: only the terminal, after the run's summary, ``(User provided
  step: 3 is less than current step: 5. Dropping entry: {...}).``; no file of the run has it, so
  such a run is reported ``unknown`` unless the job's console log is scanned too.
* 0.12.10 and older: the console (``files/output.log``, the run file's output records),
  ``Step must only increase in log calls.  Step 3 < 5; dropping {'b': 2}.``
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepsync.history import RUN_DIR_NAME, find_run_dirs

__all__ = ["Drop", "RunReport", "ScanResult", "parse_drops", "scan_paths", "scan_run"]

# wandb's own bookkeeping keys, which it adds to every dropped entry it prints.
_WANDB_KEYS = frozenset({"_timestamp", "_runtime", "_step"})
#: Terminal colour and cursor codes: a captured console holds them, wandb's messages do not.
ANSI_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CORE_LOG_MESSAGE = "ignoring partial history record"
_CORE_LOG_STEP = re.compile(r"""\bstep"?\s*[:=]\s*(\d+)""")
_CORE_LOG_CURRENT = re.compile(r"""\bcurrent"?\s*[:=]\s*(\d+)""")
# (pattern, keys shown) for the plain-text messages, newest wording first.
_TEXT_PATTERNS = (
    re.compile(r"Tried to log to step (\d+) that is less than the current step (\d+)"),
    re.compile(
        r"User provided step: (\d+) is less than current step: (\d+)\. Dropping entry: (\{.*\})\)"
    ),
    re.compile(r"\bStep (\d+) < (\d+)\. Dropping entry: (\{.*\})\.\s*$"),
    re.compile(r"Step must only increase in log calls\.\s+Step (\d+) < (\d+); dropping (\{.*\})\."),
)
_RUN_FILE_NAME = re.compile(r"^run-(?P<id>.+)\.wandb$")
# Where a console log names its run: the run folder, or the run page URL.
_RUN_MENTION = re.compile(r"(?:offline-)?run-\d{8}_\d{6}-([A-Za-z0-9]+)|/runs/([A-Za-z0-9]+)")
# The banner wandb prints when a run starts (first line of it in each version).
_RUN_START = re.compile(
    r"Tracking run with wandb version|W&B syncing is set to .offline|Syncing run "
)
_VERSION_IN_DEBUG_LOG = re.compile(r"Current SDK version is (\d+\.\d+\.\d+)")
# The Python backend of these versions reports drops on the terminal only (see module docstring).
_BLIND_VERSIONS = ((0, 15, 10), (0, 18, 0))


@dataclass(frozen=True)
class Drop:
    """One log call wandb dropped: the step it asked for, wandb's step then, keys if shown."""

    step: int
    current: int
    keys: tuple[str, ...] | None = None


@dataclass
class RunReport:
    """What scan found for one run (or one console log)."""

    run_id: str
    path: str
    status: str  # "clean", "dropped", "unknown" (wandb wrote nowhere we can read) or "error"
    drops: list[Drop] = field(default_factory=list)
    source: str | None = None  # the file the drops were read from
    wandb_version: str | None = None
    message: str | None = None

    @property
    def first_step(self) -> int | None:
        """The lowest step of a dropped call."""
        return min((d.step for d in self.drops), default=None)

    @property
    def last_step(self) -> int | None:
        """The highest step of a dropped call."""
        return max((d.step for d in self.drops), default=None)

    @property
    def keys(self) -> list[str] | None:
        """The dropped keys, sorted, if wandb's messages showed them; None if they did not."""
        if not any(d.keys is not None for d in self.drops):
            return None
        return sorted({k for d in self.drops for k in d.keys or ()})

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: one run's summary plus every drop."""
        return {
            "run_id": self.run_id,
            "path": self.path,
            "status": self.status,
            "dropped": len(self.drops),
            "first_step": self.first_step,
            "last_step": self.last_step,
            "keys": self.keys,
            "source": self.source,
            "wandb_version": self.wandb_version,
            "message": self.message,
            "drops": [
                {"step": d.step, "current": d.current, "keys": list(d.keys or ()) or None}
                for d in self.drops
            ],
        }


@dataclass
class ScanResult:
    """All reports of one scan, plus the paths that could not be read."""

    runs: list[RunReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """2 if anything was unreadable, else 1 if any run lost data, else 0."""
        if self.errors or any(r.status == "error" for r in self.runs):
            return 2
        return 1 if any(r.drops for r in self.runs) else 0


def parse_drops(text: str) -> list[Drop]:
    """Return the drops reported in ``text``: a debug-internal.log, output.log or console log."""
    return [drop for drop, _ in _drops_with_lines(text)]


def _drops_with_lines(text: str) -> list[tuple[Drop, int]]:
    found = []
    for number, raw in enumerate(text.splitlines()):
        drop = _parse_line(ANSI_CODES.sub("", raw))
        if drop is not None:
            found.append((drop, number))
    return found


def _parse_line(line: str) -> Drop | None:
    if _CORE_LOG_MESSAGE in line:
        return _parse_core_log_line(line)
    if "step" not in line.lower():
        return None  # fast path: most lines of a log say nothing about steps
    for pattern in _TEXT_PATTERNS:
        match = pattern.search(line)
        if match:
            keys = _dict_keys(match.group(3)) if pattern.groups == 3 else None
            return Drop(int(match.group(1)), int(match.group(2)), keys)
    return None


def _parse_core_log_line(line: str) -> Drop | None:
    """A wandb-core debug log line: JSON in current versions; key=value text as a fallback."""
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if isinstance(entry, dict) and isinstance(entry.get("step"), int):
        current = entry.get("current")
        return Drop(entry["step"], current if isinstance(current, int) else -1)
    step = _CORE_LOG_STEP.search(line)
    current = _CORE_LOG_CURRENT.search(line)
    if step is None:
        return None
    return Drop(int(step.group(1)), int(current.group(1)) if current else -1)


def _dict_keys(text: str) -> tuple[str, ...]:
    """The top-level keys of a printed dict, without wandb's own ``_timestamp`` etc."""
    try:
        value = ast.literal_eval(text)
        keys = [k for k in value if isinstance(k, str)] if isinstance(value, dict) else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        keys = None
    if keys is None:
        keys = _scan_dict_keys(text)  # values such as <wandb Image ...> are not Python literals
    return tuple(k for k in keys if k not in _WANDB_KEYS)


def _scan_dict_keys(text: str) -> list[str]:
    """Top-level string keys of a dict repr, read by tracking quotes and brackets."""
    keys: list[str] = []
    depth = 0
    i = 0
    expect_key = False
    while i < len(text):
        char = text[i]
        if char in "'\"":
            end = i + 1
            while end < len(text) and text[end] != char:
                end += 2 if text[end] == "\\" else 1
            if depth == 1 and expect_key and text[end + 1 : end + 2] == ":":
                try:
                    keys.append(ast.literal_eval(text[i : end + 1]))
                except (ValueError, SyntaxError):
                    keys.append(text[i + 1 : end])
            expect_key = False
            i = end + 1
            continue
        if char in "{[(":
            depth += 1
            expect_key = depth == 1 and char == "{"
        elif char in "}])":
            depth -= 1
        elif char == "," and depth == 1:
            expect_key = True
        elif not char.isspace():
            expect_key = False
        i += 1
    return keys


def _read_text(path: Path) -> str:
    with path.open("r", encoding="utf-8", errors="replace") as file:
        return file.read()


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _run_id(run_dir: Path, run_file: Path | None) -> str:
    if run_file is not None and (match := _RUN_FILE_NAME.match(run_file.name)):
        return match.group("id")
    if match := RUN_DIR_NAME.match(run_dir.name):
        return match.group("id")
    return run_dir.name


def _run_file_facts(run_file: Path) -> tuple[str | None, str]:
    """(wandb version, console text) from a run file; raises HistoryReadError if it is corrupt."""
    from stepsync.history import read_records

    version = None
    console: list[str] = []
    for record in read_records(run_file, wait_for_exit=False):
        kind = record.WhichOneof("record_type")
        if kind == "run" and record.run.telemetry.cli_version:
            version = record.run.telemetry.cli_version
        elif kind == "telemetry" and record.telemetry.cli_version:
            version = version or record.telemetry.cli_version
        elif kind in ("output", "output_raw"):
            console.append(getattr(record, kind).line)
    return version, "".join(console)


def scan_run(run_dir: str | os.PathLike[str]) -> RunReport:
    """Scan one run directory; an unreadable or corrupt run gives a report with status "error"."""
    from stepsync.history import HistoryReadError

    path = Path(run_dir)
    run_files = sorted(path.glob("run-*.wandb"))
    run_file = run_files[0] if run_files else None
    report = RunReport(run_id=_run_id(path, run_file), path=str(path), status="clean")
    internal_log = path / "logs" / "debug-internal.log"
    output_log = path / "files" / "output.log"
    try:
        version, console = _run_file_facts(run_file) if run_file else (None, "")
        internal = _read_text(internal_log) if internal_log.is_file() else ""
        if output_log.is_file():
            console = _read_text(output_log)
        if version is None and (path / "logs" / "debug.log").is_file():
            match = _VERSION_IN_DEBUG_LOG.search(_read_text(path / "logs" / "debug.log"))
            version = match.group(1) if match else None
    except (HistoryReadError, OSError) as exc:
        report.status = "error"
        report.message = _one_line(exc)
        return report
    if run_file is None and not internal_log.is_file() and not output_log.is_file():
        report.status = "error"
        report.message = f"{path}: not a wandb run (no run-*.wandb file and no logs)"
        return report

    report.wandb_version = version
    internal_drops = parse_drops(internal)
    console_drops = parse_drops(console)
    # Both are accounts of the same drops; the console loses lines under load, so take the
    # fuller one (on a tie the debug log, which wandb-core writes synchronously).
    if internal_drops and len(internal_drops) >= len(console_drops):
        report.drops, report.source = internal_drops, str(internal_log)
    elif console_drops:
        source = output_log if output_log.is_file() else run_file
        report.drops, report.source = console_drops, str(source)
    if report.drops:
        report.status = "dropped"
    elif _is_blind(version, internal):
        report.status = "unknown"
        report.message = (
            f"wandb {version} reports dropped steps only on the terminal; "
            "scan the job's console log file too"
        )
    return report


def _is_blind(version: str | None, internal_log: str) -> bool:
    """True for a Python-backend run of a version that wrote drops to no file of the run."""
    if version is None or internal_log.lstrip().startswith("{"):
        return False  # unknown version, or a wandb-core run (its debug log is JSON lines)
    low, high = _BLIND_VERSIONS
    return low <= _version_tuple(version) < high


def scan_console_log(path: str | os.PathLike[str]) -> list[RunReport]:
    """Scan a job's console log (e.g. a batch job's output file), one report per run in it.

    The log is cut where a run starts (wandb's start banner); each part belongs to the first run
    it names (wandb prints the run folder or URL at the start or, in old versions, at the end).
    """
    file = Path(path)
    segments: list[tuple[list[str], list[Drop]]] = [([], [])]
    for raw in _read_text(file).splitlines():
        line = ANSI_CODES.sub("", raw)
        mentioned, drops = segments[-1]
        if _RUN_START.search(line) and (mentioned or drops):
            segments.append(([], []))
            mentioned, drops = segments[-1]
        mentioned.extend(next(g for g in m.groups() if g) for m in _RUN_MENTION.finditer(line))
        drop = _parse_line(line)
        if drop is not None:
            drops.append(drop)
    reports: list[RunReport] = []
    for mentioned, drops in segments:
        if not mentioned and not drops and reports:
            continue
        run_id = mentioned[0] if mentioned else file.name
        status = "dropped" if drops else "clean"
        reports.append(RunReport(run_id, str(file), status, drops=drops, source=str(file)))
    return reports


def scan_paths(paths: Sequence[str | os.PathLike[str]]) -> ScanResult:
    """Scan each path: a run directory, a folder holding runs, a run file, or a console log."""
    result = ScanResult()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            result.errors.append(f"{path}: no such file or directory")
            continue
        try:
            result.runs.extend(_scan_one(path))
        except OSError as exc:
            result.errors.append(_one_line(exc))
        except _NoRunsError as exc:
            result.errors.append(str(exc))
    return result


class _NoRunsError(Exception):
    pass


def _scan_one(path: Path) -> Iterable[RunReport]:
    if path.is_file():
        if path.suffix == ".wandb":
            return [scan_run(path.parent)]
        return scan_console_log(path)
    runs = find_run_dirs(path)
    if not runs:
        raise _NoRunsError(f"{path}: no wandb runs found")
    return [scan_run(run) for run in runs]


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return " ".join(text.split())
