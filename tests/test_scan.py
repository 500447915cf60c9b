"""`stepsync scan`: counts the log calls wandb dropped, from the files wandb wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _wandb_helpers import finish_run

from stepsync import _wandb
from stepsync._scan import Drop, parse_drops, scan_paths, scan_run
from stepsync.cli import main
from stepsync.history import find_run_dirs, read_history

# Exact lines written by each wandb version (run offline with `log(step=5)` then `log(step=3)`).
CORE_DEBUG_LOG = (
    '{"time":"2026-11-26T19:30:19.126426298Z","level":"WARN",'
    '"msg":"handler: ignoring partial history record","step":3,"current":5}'
)
CORE_CONSOLE = (
    "wandb: WARNING Tried to log to step 3 that is less than the current step 5. Steps must be "
    "monotonically increasing, so this data will be ignored. See https://wandb.me/define-metric "
    "to log data out of order."
)
PY_DEBUG_LOG = (  # wandb 0.12.21 to 0.15.9, logs/debug-internal.log
    "2026-11-26 19:33:46,293 WARNING HandlerThread:10249 "
    "[handler.py:handle_request_partial_history():530] Step 3 < 5. Dropping entry: "
    "{'b': 2, 'c/x': 3, '_timestamp': 1795721626.2523704, '_runtime': 0.028421640396118164}."
)
PY_CONSOLE = (  # wandb 0.15.10 to 0.17, terminal only
    "wandb: WARNING (User provided step: 3 is less than current step: 5. Dropping entry: "
    "{'b': 2, 'c/x': 3, '_timestamp': 1795721670.113798})."
)
OLD_CONSOLE = (  # wandb 0.12.10 and older, files/output.log, with terminal colours
    "\x1b[34m\x1b[1mwandb\x1b[39m\x1b[22m: \x1b[33mWARNING\x1b[39m Step must only increase in "
    "log calls.  Step 3 < 5; dropping {'b': 2, 'c/x': 3}."
)


def _run_with_drops(offline_run, steps: list[int]) -> Path:
    """Log one value at each of ``steps`` in a real offline run; return its finished run dir."""
    run = offline_run()
    for i, step in enumerate(steps):
        run.log({f"k{i}": i, "shared": i}, step=step)
    finish_run(run)
    run_dir = Path(run.settings.sync_file).parent
    read_history(run_dir)  # waits for the exit record: wandb-core has handled every log call
    return run_dir


class TestParseDrops:
    """Every wording wandb has used for a dropped step is recognised."""

    @pytest.mark.parametrize(
        ("line", "keys"),
        [
            (CORE_DEBUG_LOG, None),
            (CORE_CONSOLE, None),
            (PY_DEBUG_LOG, ("b", "c/x")),
            (PY_CONSOLE, ("b", "c/x")),
            (OLD_CONSOLE, ("b", "c/x")),
        ],
    )
    def test_each_wording(self, line, keys):
        """Each version's line gives the step asked for, wandb's step, and the keys if shown."""
        assert parse_drops(f"noise\n{line}\nmore noise step 7\n") == [Drop(3, 5, keys)]

    def test_keys_of_values_that_are_not_literals(self):
        """Keys are read even when a value is an object repr such as a wandb Image."""
        line = (
            "wandb: WARNING (User provided step: 1 is less than current step: 9. Dropping entry: "
            "{'img': <wandb.sdk.data_types.image.Image object at 0x7f>, \"it's\": {'x': 1}, "
            "'s': 'a, \\'b\\': c', '_timestamp': 1.5})."
        )
        assert parse_drops(line) == [Drop(1, 9, ("img", "it's", "s"))]

    def test_ordinary_lines(self):
        """Lines about steps that are not drops are not counted."""
        text = 'step 3 done\nwandb: WARNING something else\n{"msg":"handler: started"}\n'
        assert parse_drops(text) == []


#: wandb < 0.18 (its Python backend) reports drops on the terminal only, not in the run's files.
DROPS_ONLY_ON_TERMINAL = _wandb.VERSION < (0, 18, 0)
TERMINAL_ONLY = "wandb < 0.18 reports drops on the terminal only; scan reads a console log there"


class TestScanRealRuns:
    """Runs written by the installed wandb are scanned exactly."""

    @pytest.mark.skipif(not DROPS_ONLY_ON_TERMINAL, reason="wandb >= 0.18 records drops")
    def test_runs_of_old_wandb_are_unknown_not_clean(self, offline_run):
        """A run folder of wandb < 0.18 holds no word of its drops: scan says it cannot tell."""
        assert scan_run(_run_with_drops(offline_run, [5, 3])).status == "unknown"
        assert scan_run(_run_with_drops(offline_run, [0, 1])).status == "unknown"

    @pytest.mark.skipif(DROPS_ONLY_ON_TERMINAL, reason=TERMINAL_ONLY)
    def test_counts_each_drop(self, offline_run):
        """A run with 3 out-of-order calls reports 3 drops, steps 2..4, from the debug log."""
        run_dir = _run_with_drops(offline_run, [5, 3, 6, 4, 7, 2, 8])
        report = scan_run(run_dir)
        assert report.status == "dropped"
        assert [(d.step, d.current) for d in report.drops] == [(3, 5), (4, 6), (2, 7)]
        assert (report.first_step, report.last_step) == (2, 4)
        assert report.source is not None
        assert report.source.endswith("debug-internal.log")

    @pytest.mark.skipif(DROPS_ONLY_ON_TERMINAL, reason=TERMINAL_ONLY)
    def test_clean_run_and_folder_exit_codes(self, offline_run, tmp_path, capsys):
        """A folder with a clean and a dropping run: exit 1, both listed; the clean one alone: 0."""
        clean = _run_with_drops(offline_run, [0, 1, 2])
        dirty = _run_with_drops(offline_run, [5, 3])
        assert scan_run(clean).status == "clean"
        assert main(["scan", str(clean)]) == 0
        capsys.readouterr()
        assert main(["scan", "--json", str(tmp_path)]) == 1
        document = json.loads(capsys.readouterr().out)
        by_path = {run["path"]: run for run in document["runs"]}
        assert by_path[str(clean)]["dropped"] == 0
        assert by_path[str(dirty)]["dropped"] == 1
        assert by_path[str(dirty)]["first_step"] == 3
        assert document["exit_code"] == 1

    def test_latest_run_link_is_not_counted_twice(self, offline_run, tmp_path):
        """`wandb/latest-run` points at a run that is listed once."""
        _run_with_drops(offline_run, [1, 0])
        assert (tmp_path / "wandb" / "latest-run").is_symlink()
        assert len(find_run_dirs(tmp_path)) == 1

    def test_corrupt_run_file(self, offline_run, capsys):
        """A run file damaged in the middle: exit 2, one line naming the file, no traceback."""
        run_dir = _run_with_drops(offline_run, [0, 1])
        run_file = next(run_dir.glob("run-*.wandb"))
        data = bytearray(run_file.read_bytes())
        data[40] ^= 0xFF
        run_file.write_bytes(bytes(data))
        assert main(["scan", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert run_file.name in err
        assert "Traceback" not in err


class TestBadPaths:
    """Paths that hold no readable run exit 2 with one line each."""

    def test_missing_path(self, tmp_path, capsys):
        """A path that does not exist."""
        assert main(["scan", str(tmp_path / "nope")]) == 2
        err = capsys.readouterr().err
        assert err == f"stepsync scan: {tmp_path / 'nope'}: no such file or directory\n"

    def test_empty_folder(self, tmp_path, capsys):
        """A folder with no run in it."""
        empty = tmp_path / "empty"
        empty.mkdir()
        assert main(["scan", str(empty)]) == 2
        assert capsys.readouterr().err == f"stepsync scan: {empty}: no wandb runs found\n"

    def test_not_a_run_file(self, tmp_path, capsys):
        """A run folder whose run file is not a wandb file."""
        run_dir = tmp_path / "offline-run-20240101_000000-abc123"
        run_dir.mkdir()
        (run_dir / "run-abc123.wandb").write_bytes(b"this is not a wandb file at all")
        assert main(["scan", str(tmp_path)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1
        assert "bad header" in err[0]

    def test_errors_win_over_drops(self, tmp_path):
        """One unreadable path makes the exit status 2 even when another run lost data."""
        log = tmp_path / "job.out"
        log.write_text(CORE_CONSOLE + "\n")
        result = scan_paths([log, tmp_path / "missing"])
        assert len(result.runs[0].drops) == 1
        assert result.exit_code == 2


class TestOlderRuns:
    """Runs of older wandb versions and console logs."""

    def test_python_backend_run_dir(self, tmp_path):
        """A 0.13-era run: drops and keys come from its text debug-internal.log."""
        run_dir = tmp_path / "run-20230101_000000-old1"
        (run_dir / "logs").mkdir(parents=True)
        (run_dir / "logs" / "debug-internal.log").write_text(f"x\n{PY_DEBUG_LOG}\n{PY_DEBUG_LOG}\n")
        report = scan_run(run_dir)
        assert (report.run_id, len(report.drops), report.keys) == ("old1", 2, ["b", "c/x"])

    def test_version_that_wrote_drops_nowhere(self, tmp_path):
        """A 0.16 run without the job's console log is "unknown", not clean."""
        run_dir = tmp_path / "offline-run-20240101_000000-old2"
        (run_dir / "logs").mkdir(parents=True)
        (run_dir / "logs" / "debug-internal.log").write_text("2024-01-01 00:00:00,000 INFO x\n")
        (run_dir / "logs" / "debug.log").write_text("... Current SDK version is 0.16.6\n")
        report = scan_run(run_dir)
        assert report.status == "unknown"
        assert scan_paths([tmp_path]).exit_code == 0

    def test_console_log_with_two_runs(self, tmp_path):
        """Each part of a console log belongs to the run it names, even when named at its end."""
        log = tmp_path / "slurm-1.out"
        log.write_text(
            "wandb: Tracking run with wandb version 0.16.6\n"
            "wandb: Find logs at: ./wandb/offline-run-20240101_000000-first1/logs\n"
            f"{PY_CONSOLE}\n{PY_CONSOLE}\n"
            "wandb: W&B syncing is set to `offline` in this directory.\n"
            f"{OLD_CONSOLE}\n"
            "wandb: Find user logs at: wandb/offline-run-20240101_000100-second2/logs\n"
        )
        reports = scan_paths([log]).runs
        assert [(r.run_id, len(r.drops)) for r in reports] == [("first1", 2), ("second2", 1)]
