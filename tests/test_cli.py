"""The `stepsync` command line: help, `run`, and the table printer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stepsync._table import render_table
from stepsync.cli import main


class TestHelp:
    """`--help` explains each command with an example."""

    def test_top_level_help_lists_commands_with_examples(self, capsys):
        """The overview names demo, scan and run, each with a command line to copy."""
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        for example in ("stepsync demo", "stepsync scan ./wandb", "stepsync run -- python"):
            assert example in out

    @pytest.mark.parametrize("command", ["demo", "scan", "run"])
    def test_each_command_has_an_example(self, command, capsys):
        """Each command's help has an examples section using that command."""
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out
        assert f"stepsync {command} " in out.split("examples:")[1]

    def test_usage_error_is_one_line(self, capsys):
        """An unknown option exits 2 with one line, no traceback."""
        with pytest.raises(SystemExit) as exit_info:
            main(["scan", "--bogus", "x"])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.count("\n") == 1

    def test_no_command_prints_help(self, capsys):
        """`stepsync` alone shows the overview and exits 2."""
        assert main([]) == 2
        assert "commands:" in capsys.readouterr().out

    def test_python_dash_m(self):
        """`python -m stepsync --help` works."""
        done = subprocess.run(
            [sys.executable, "-m", "stepsync", "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0
        assert "stepsync scan" in done.stdout


class TestRun:
    """`stepsync run` runs a command with STEPSYNC_ENABLED=1 and returns its exit status."""

    def test_sets_the_variable_and_passes_the_exit_status(self):
        """The command sees STEPSYNC_ENABLED=1 and its exit status comes back unchanged."""
        code = "import os, sys; sys.exit(7 if os.environ.get('STEPSYNC_ENABLED') == '1' else 3)"
        done = subprocess.run(
            [sys.executable, "-m", "stepsync", "run", "--", sys.executable, "-S", "-c", code],
            env={"PATH": "/usr/bin:/bin", "STEPSYNC_ENABLED": "0"},
            check=False,
        )
        assert done.returncode == 7

    def test_arguments_pass_through(self):
        """Options after the command belong to the command, not to stepsync."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "stepsync",
                "run",
                sys.executable,
                "-S",
                "-c",
                "import sys; print(sys.argv[1:])",
                "--help",
                "-x",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.stdout.strip() == "['--help', '-x']"

    def test_missing_command(self, capsys):
        """A command that does not exist: exit 127 with one line."""
        assert main(["run", "--", "stepsync-no-such-command-xyz"]) == 127
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "stepsync-no-such-command-xyz" in err

    def test_no_command(self, capsys):
        """`stepsync run` with nothing to run exits 2."""
        assert main(["run"]) == 2
        assert "no command" in capsys.readouterr().err


class TestRenderTable:
    """The plain table printer aligns columns and needs nothing beyond the standard library."""

    def test_alignment(self):
        """Text columns align left, listed columns right; no trailing spaces; None shows as -."""
        text = render_table(("run", "dropped"), [("a", 3), ("longer", None)], right=(1,))
        assert text.splitlines() == ["run     dropped", "a             3", "longer        -"]

    def test_row_width_checked(self):
        """A row with the wrong number of cells is a ValueError."""
        with pytest.raises(ValueError, match="2 cells"):
            render_table(("a",), [(1, 2)])
