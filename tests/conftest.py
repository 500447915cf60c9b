"""Shared fixtures: every test runs wandb offline in its own temporary folders."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# No error reports to Sentry from the tests (offline, no network): wandb reads this at import.
os.environ["WANDB_ERROR_REPORTING"] = "false"

# wandb < 0.18 imports PIL.Image lazily (``wandb.util.import_module_lazy``): into sys.modules,
# without setting the ``PIL.Image`` attribute, so matplotlib's ``PIL.Image`` fails in any later
# test (measured on 0.15.12). Imported for real first, wandb then finds it in sys.modules.
with contextlib.suppress(ImportError):
    import PIL.Image  # noqa: F401

from _wandb_helpers import finish_run, init_run

import stepsync
from stepsync._config import reset as reset_config
from stepsync._warn import reset as reset_warnings


@pytest.fixture(autouse=True)
def isolated_wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run wandb offline and quiet, in tmp folders, with no STEPSYNC_/WANDB_ variable leaking in."""
    # WANDB_SERVICE included: wandb sets it when this process starts its wandb-core, and a script
    # run in a subprocess would then join that service (its run never finishing at its exit)
    # instead of starting its own. wandb keeps its in-process connection without the variable.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # a first wandb.init sets it: undone
    for name in list(os.environ):
        if name.startswith(("STEPSYNC_", "WANDB_")):
            monkeypatch.delenv(name)
    home = tmp_path / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    for variable in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        folder = home / variable.removeprefix("WANDB_").lower()
        folder.mkdir(parents=True)
        monkeypatch.setenv(variable, str(folder))


@pytest.fixture(autouse=True)
def clean_globals() -> Iterator[None]:
    """Every test starts and ends unpatched, with no configure() defaults and no warning shown."""
    stepsync.unpatch()
    reset_config()
    reset_warnings()
    yield
    stepsync.unpatch()
    reset_config()


@pytest.fixture
def offline_run(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory: ``run = offline_run(**init_kwargs)`` starts an offline run under tmp_path."""
    runs: list[Any] = []

    def start(**init_kwargs: Any) -> Any:
        kwargs: dict[str, Any] = {
            "mode": "offline",
            "dir": tmp_path,
            "project": "stepsync-tests",
            "reinit": "create_new",
            **init_kwargs,
        }
        run = init_run(**kwargs)
        runs.append(run)
        return run

    yield start
    for run in reversed(runs):
        finish_run(run)
