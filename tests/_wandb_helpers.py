"""Helpers for tests that read a real offline wandb run back (import: `from _wandb_helpers ...`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import wandb

from stepsync import _wandb
from stepsync.history import read_history, read_records

#: The installed wandb, as a tuple (tests whose wandb facts changed across versions read it).
WANDB_VERSION = _wandb.VERSION
#: wandb >= 0.19.10: ``reinit="create_new"``, several live runs in one process.
SEVERAL_LIVE_RUNS = _wandb.SEVERAL_LIVE_RUNS
#: For tests that hold two live runs at once.
needs_several_live_runs = pytest.mark.skipif(
    not SEVERAL_LIVE_RUNS,
    reason="wandb < 0.19.10 holds one live run per process (no reinit='create_new')",
)

#: The axis key stepsync writes into every row it commits.
AXIS = "stepsync/step"
#: A flush_interval long enough that no background commit happens during a test.
QUIET = 3600.0

# wandb's own bookkeeping keys; `_step` is kept because tests assert on the native step.
NON_USER_KEYS = frozenset({"_runtime", "_timestamp", "_wandb"})

#: For tests that log a ``wandb.Table``: offline, wandb 0.18.x and 0.19.1 (measured; 0.19.10 and
#: 0.17.9 do not) try the network at the Table and hang without it, natively too.
tables_work_offline = pytest.mark.skipif(
    (0, 18, 0) <= WANDB_VERSION < (0, 19, 10),
    reason="offline, wandb 0.18 to 0.19.9 try the network when a wandb.Table is logged and hang",
)


def finish_run(run: Any) -> None:
    """Finish ``run`` unless it is finished already."""
    if not _wandb.is_finished(run):
        run.finish()


def init_run(**kwargs: Any) -> Any:
    """``wandb.init(**kwargs)``, with ``reinit`` as this wandb understands it.

    Before wandb 0.19.10 there is no ``reinit="create_new"``/``"finish_previous"``: a process
    holds one live run, so the previous one is finished and ``reinit=True`` starts the next.
    """
    if not SEVERAL_LIVE_RUNS and kwargs.get("reinit") in ("create_new", "finish_previous"):
        if wandb.run is not None:
            finish_run(wandb.run)
        kwargs["reinit"] = True
    return wandb.init(**kwargs)


def rows_of(run: Any) -> list[dict[str, Any]]:
    """Finish ``run`` if needed and return the history rows wandb wrote for it."""
    finish_run(run)
    return read_history(run.settings.sync_file)


def records_of(run: Any, kind: str) -> list[Any]:
    """Finish ``run`` if needed and return its records of one type ("metric", "exit", ...)."""
    finish_run(run)
    return [r for r in read_records(run.settings.sync_file) if r.WhichOneof("record_type") == kind]


def user_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop wandb's `_runtime`, `_timestamp`, `_wandb` from each row to keep assertions short."""
    return [{k: v for k, v in row.items() if k not in NON_USER_KEYS} for row in rows]


def declared_metrics(run: Any) -> set[tuple[str, str]]:
    """(name, step metric) of every metric record stepsync or the user wrote, globs expanded
    by older wandb versions left out."""
    return {
        (m.metric.name or m.metric.glob_name, m.metric.step_metric)
        for m in records_of(run, "metric")
        if not derived_from_glob(m.metric)
    }


def rows(run: Any) -> list[dict[str, Any]]:
    """Finish ``run`` and return its rows without wandb's timing keys."""
    return user_rows(rows_of(run))


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds (fails the test after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def script_env() -> dict[str, str]:
    """The test's environment (see conftest) for a script run in a subprocess: offline, quiet."""
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"})
    return env


def run_script(
    folder: Path, name: str, source: str, *args: str, timeout: float = 90
) -> list[dict[str, Any]]:
    """Write ``source`` to ``folder/name``, run it to completion, return its JSON stdout lines."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(source)
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=script_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def derived_from_glob(metric: Any) -> bool:
    """A metric record wandb wrote itself for a key a glob matched: ``expanded_from_glob``
    (wandb-core); wandb < 0.18 (the Python backend, no such field) writes those with
    ``options.defined`` False, where every ``define_metric`` call's own record has it True."""
    if "expanded_from_glob" in metric.DESCRIPTOR.fields_by_name:
        return bool(metric.expanded_from_glob)
    return not metric.options.defined


def _set_path(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[keys[-1]] = value


def fold_updates(records: list[Any], kind: str) -> dict[str, Any]:
    """A ``summary`` or ``config`` as the file ends with it: every record's updates in order."""
    folded: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") != kind:
            continue
        message = getattr(record, kind)
        for item in message.update:
            _set_path(folded, list(item.nested_key) or [item.key], json.loads(item.value_json))
        for item in message.remove:
            keys = list(item.nested_key) or [item.key]
            level: Any = folded
            for key in keys[:-1]:
                level = level.get(key, {}) if isinstance(level, dict) else {}
            if isinstance(level, dict):
                level.pop(keys[-1], None)
    return folded


def recorded_summary(records: list[Any]) -> dict[str, Any]:
    """The summary the file ends with: every ``summary`` record's updates applied in order."""
    return fold_updates(records, "summary")


def summary_of(run: Any) -> dict[str, Any]:
    """Finish ``run`` if needed and return the summary its file ends with."""
    finish_run(run)
    return recorded_summary(read_records(run.settings.sync_file))
