"""The `stepsync` command: `demo` shows the fix, `scan` finds lost data, `run` switches it on."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from stepsync import __version__

__all__ = ["main"]

_DESCRIPTION = """\
stepsync makes wandb logging lose nothing when several parts of a job log at once.

commands:
  demo   run a small simulated training job twice, offline, without and with stepsync,
         and show how many logged values wandb kept
           stepsync demo
           stepsync demo --steps 200 --json
  scan   find the log calls wandb dropped in runs you already have
           stepsync scan ./wandb
  run    run a command with stepsync switched on (STEPSYNC_ENABLED=1)
           stepsync run -- python train.py --lr 3e-4

`stepsync COMMAND --help` explains each command.
"""

_SCAN_DESCRIPTION = """\
Report, for each wandb run, how many log calls wandb dropped because their step was below its
current step, which steps they asked for (lowest and highest), and the dropped keys when wandb's
message shows them (wandb 0.18 and later does not).

PATH is a run directory, a folder holding runs (such as ./wandb, searched recursively), a
run-*.wandb file, or a job's console log (a batch job's output file): wandb 0.15.10 to 0.17
printed dropped steps on the terminal only, so for those runs scan the console log.

exit status: 0 no drops, 1 drops found, 2 a path or run could not be read.

examples:
  stepsync scan ./wandb
  stepsync scan wandb/run-20240101_120000-abc123 slurm-4242.out
  stepsync scan --json ./wandb > drops.json
"""

_RUN_DESCRIPTION = """\
Run COMMAND with STEPSYNC_ENABLED=1 in its environment, so every Python process it starts
(workers of torchrun or accelerate included) patches wandb when it imports it; no code change.
The exit status is COMMAND's own.

examples:
  stepsync run -- python train.py --epochs 3
  stepsync run -- torchrun --nproc-per-node 4 train.py
"""

_DEMO_DESCRIPTION = """\
Run the same simulated training job twice in wandb offline mode, in a temporary folder (no
account, no network, your wandb settings untouched): natively, then with stepsync. The job has
a trainer that logs without step, a callback that logs with step=global_step, an evaluation
finishing in a worker thread after training moved on, a resume that replays the last 5 steps,
and two sources writing the same key at different priorities. Both runs are read back from
wandb's own files and compared.

examples:
  stepsync demo
  stepsync demo --steps 500 --json
  stepsync demo --plot demo.png      (needs: pip install 'stepsync[plot]')
  stepsync demo --keep ./demo-runs   (then: stepsync scan ./demo-runs)
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits 2, as the scan contract says."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stepsync",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = commands.add_parser(
        "demo",
        help="show the problem and the fix on a simulated job",
        description=_DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    demo.add_argument("--json", action="store_true", help="print one JSON object instead")
    demo.add_argument("--keep", metavar="DIR", help="keep both runs in DIR instead of a temp dir")
    demo.add_argument("--plot", metavar="FILE.png", help="draw the callback metric, both runs")

    scan = commands.add_parser(
        "scan",
        help="find data wandb dropped in existing runs",
        description=_SCAN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scan.add_argument("paths", nargs="+", metavar="PATH", help="run dir, runs folder, or log")
    scan.add_argument("--json", action="store_true", help="print one JSON object instead")

    run = commands.add_parser(
        "run",
        help="run a command with stepsync switched on",
        description=_RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="stepsync run [-h] [--] COMMAND [ARG ...]",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND", help="command to run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stepsync`` console script; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "scan":
            return _scan(args.paths, as_json=args.json)
        if args.command == "run":
            return _run(args.cmd)
        if args.command == "demo":
            return _demo(args)
    except KeyboardInterrupt:
        print("stepsync: interrupted", file=sys.stderr)
        return 130
    parser.print_help()
    return 2


def _scan(paths: Sequence[str], *, as_json: bool) -> int:
    from stepsync._scan import scan_paths

    result = scan_paths(paths)
    code = result.exit_code
    if as_json:
        document = {
            "exit_code": code,
            "runs": [report.to_json() for report in result.runs],
            "errors": result.errors,
            "dropped": sum(len(report.drops) for report in result.runs),
        }
        print(json.dumps(document, indent=2))
    else:
        _print_scan(result)
    for error in result.errors:
        print(f"stepsync scan: {error}", file=sys.stderr)
    for report in result.runs:
        if report.status == "error":
            print(f"stepsync scan: {report.message}", file=sys.stderr)
    return code


def _print_scan(result: Any) -> None:
    from stepsync._table import render_table

    if not result.runs:
        return
    rows = []
    for report in result.runs:
        if report.status == "dropped":
            steps = f"{report.first_step}..{report.last_step}"
            dropped: object = len(report.drops)
        else:
            steps = None
            dropped = {"clean": 0, "unknown": "?", "error": "!"}[report.status]
        keys = report.keys
        shown = "(not shown)" if report.drops and keys is None else _short_keys(keys)
        rows.append((report.run_id, dropped, steps, shown, report.path))
    print(render_table(("run", "dropped", "steps", "keys", "path"), rows, right=(1,)))
    lost = [r for r in result.runs if r.drops]
    calls = sum(len(r.drops) for r in lost)
    summary = f"{len(result.runs)} run(s) scanned, {len(lost)} with dropped data"
    print(f"\n{summary} ({calls} log call(s) dropped)." if lost else f"\n{summary}.")
    for report in result.runs:
        if report.status == "unknown":
            print(f"{report.run_id}: {report.message}")


def _short_keys(keys: list[str] | None, limit: int = 4) -> str | None:
    if not keys:
        return None
    shown = ", ".join(keys[:limit])
    return f"{shown}, +{len(keys) - limit} more" if len(keys) > limit else shown


def _run(cmd: Sequence[str]) -> int:
    command = list(cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print(
            "stepsync run: error: no command given (example: stepsync run -- python train.py)",
            file=sys.stderr,
        )
        return 2
    env = dict(os.environ, STEPSYNC_ENABLED="1")
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        # exec: the command keeps this process id, receives signals (Ctrl-C, a scheduler's
        # SIGTERM) directly, and its exit status is ours with nothing in between.
        try:
            os.execvpe(command[0], command, env)
        except OSError as exc:
            print(f"stepsync run: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
            return 127
    try:
        return subprocess.call(command, env=env)
    except OSError as exc:
        print(f"stepsync run: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127


def _demo(args: argparse.Namespace) -> int:
    from stepsync._demo import run_demo_cli

    return run_demo_cli(steps=args.steps, as_json=args.json, keep=args.keep, plot_file=args.plot)
