"""`stepsync demo`: the same job loses data natively and loses nothing with stepsync."""

from __future__ import annotations

import copy
import json

import pytest

from stepsync import _demo
from stepsync._scan import scan_run
from stepsync.cli import main

STEPS = 40


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Both demo runs (real wandb, offline, in child processes), kept in a temporary folder."""
    return _demo.run_demo(STEPS, tmp_path_factory.mktemp("demo"))


class TestDemoNumbers:
    """The demo's numbers show the problem natively and none with stepsync."""

    def test_native_loses_stepsync_keeps_everything(self, demo):
        """Native: values dropped and misplaced; stepsync: every value kept at its step."""
        native, synced = demo["native"].to_json(), demo["stepsync"].to_json()
        assert native["values_logged"] == synced["values_logged"] > 0
        assert native["dropped"] > 0
        assert native["values_kept"] < native["values_logged"]
        assert synced["dropped"] == 0
        assert synced["wrong_step"] == 0
        assert synced["values_kept"] == synced["values_logged"]

    def test_wandb_own_account_agrees(self, demo):
        """wandb's debug log reports drops for the native run and none for the stepsync run."""
        native, synced = demo["native"], demo["stepsync"]
        assert native.drops_reported > 0
        assert native.warnings > 0
        assert (synced.drops_reported, synced.warnings) == (0, 0)
        assert len(scan_run(synced.run_dir).drops) == 0

    def test_stepsync_merges_calls(self, demo):
        """Same log calls from the job; stepsync makes fewer calls to wandb (one per row)."""
        native, synced = demo["native"], demo["stepsync"]
        assert native.log_calls == synced.log_calls == native.wandb_calls
        assert synced.wandb_calls == synced.rows < synced.log_calls

    def test_callback_series(self, demo):
        """Every callback value (step=global_step) is kept with stepsync; natively some are lost."""
        native, synced = demo["native"], demo["stepsync"]
        assert len(synced.callback_kept) == len(synced.callback_logged) >= STEPS
        assert len(native.callback_kept) < len(native.callback_logged)


class TestDemoOutput:
    """What `stepsync demo` prints and draws."""

    def test_json_shape(self, demo, monkeypatch, capsys):
        """`--json` prints {"native": {...}, "stepsync": {...}} with the counts."""
        monkeypatch.setattr(_demo, "run_demo", lambda steps, workdir: copy.deepcopy(demo))
        assert main(["demo", "--json", "--steps", str(STEPS)]) == 0
        document = json.loads(capsys.readouterr().out)
        assert set(document) == {"native", "stepsync"}
        for counts in document.values():
            for key in ("values_logged", "values_kept", "dropped", "rows", "wandb_calls"):
                assert isinstance(counts[key], int)
            assert counts["run_dir"] is None  # the temporary folder is gone

    def test_table(self, demo):
        """The table has one aligned line per count, both variants side by side."""
        text = _demo.render(demo, STEPS, "0.31.0")
        lines = text.splitlines()
        assert "native wandb" in lines[2]
        assert "with stepsync" in lines[2]
        kept = next(line for line in lines if line.startswith("values kept"))
        assert kept.split()[-1] == str(demo["stepsync"].values_logged)
        assert len({len(line) for line in lines[2:]}) == 1  # right-aligned numbers

    def test_plot(self, demo, tmp_path):
        """`--plot` writes a PNG of the callback metric (needs matplotlib)."""
        pytest.importorskip("matplotlib")
        file = tmp_path / "demo.png"
        _demo.plot(demo, file)
        assert file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class TestDemoArguments:
    """Bad arguments are refused before any run starts."""

    def test_too_few_steps(self, capsys):
        """`--steps` below the minimum: exit 2, one line."""
        assert main(["demo", "--steps", "3"]) == 2
        assert capsys.readouterr().err.count("\n") == 1

    def test_keep_must_be_empty(self, tmp_path, capsys):
        """`--keep` into a folder with files in it is refused (nothing is overwritten)."""
        (tmp_path / "precious.txt").write_text("x")
        assert main(["demo", "--keep", str(tmp_path)]) == 2
        assert "not an empty folder" in capsys.readouterr().err

    def test_plot_folder_must_exist(self, tmp_path, capsys):
        """`--plot` into a missing folder is refused."""
        pytest.importorskip("matplotlib")
        assert main(["demo", "--plot", str(tmp_path / "no" / "x.png")]) == 2
        assert "no folder" in capsys.readouterr().err
