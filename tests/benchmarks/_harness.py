"""Shared parts of the benchmark scripts: offline runs, the discarding sink, paired timing.

Every figure is a ratio of two timings taken in the same process, interleaved repetition by
repetition (the order flips each time), and reported as the median of the per-repetition
ratios, so drift and noise from other processes on the machine hit both sides alike.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


def _prepare_environment() -> str:
    """Offline, quiet wandb writing only under a private temp folder; no stepsync env defaults."""
    for name in list(os.environ):
        if name.startswith("STEPSYNC_") and name != "STEPSYNC_ENABLED":
            del os.environ[name]
    folder = tempfile.mkdtemp(prefix="stepsync-bench-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # after wandb's own exit hooks
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ["WANDB_CONSOLE"] = "off"
    os.environ["WANDB_DIR"] = folder
    for variable in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        path = os.path.join(folder, variable.removeprefix("WANDB_").lower())
        os.makedirs(path, exist_ok=True)
        os.environ[variable] = path
    return folder


TMP = _prepare_environment()

import wandb  # noqa: E402  (after the environment above is set)

import stepsync  # noqa: E402
from stepsync import _wandb  # noqa: E402

#: The four sources of the benchmark loop, three keys each (priority = index).
SOURCES: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ("trainer", ("train/loss", "train/acc", "train/grad_norm")),
    ("optimizer", ("optim/lr", "optim/momentum", "optim/weight_decay")),
    ("evaluator", ("eval/loss", "eval/acc", "eval/f1")),
    ("system", ("sys/mem", "sys/tokens_per_s", "sys/step_time")),
)


def row(keys: tuple[str, str, str], x: float) -> dict[str, float]:
    """The three values one source logs per step (built per call, as user code does)."""
    return {keys[0]: x, keys[1]: x * 0.5, keys[2]: x * 0.25}


_runs: list[Any] = []
#: Set by ``--pin``: this process on one CPU, wandb-core on the others (see ``pin_cpus``).
_pin = {"wanted": False, "done": False}


def pin_cpus() -> str:
    """Put this process's threads on one CPU and wandb-core's on the others (Linux only).

    Unpinned, one native ``run.log`` call took 100 to 460 us on a 2-CPU machine, changing every
    few hundred calls with where the scheduler put wandb's asyncio thread and wandb-core; pinned,
    93 to 136 us. Threads started later inherit their parent thread's CPUs.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return "not pinned (needs Linux and 2 CPUs)"
    own, core = {cpus[0]}, set(cpus[1:])
    children: set[int] = set()
    try:
        for task in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(task), own)
            with open(f"/proc/self/task/{task}/children", encoding="ascii") as listing:
                children.update(int(pid) for pid in listing.read().split())
        for child in children:  # wandb-core, started by the first wandb.init
            for task in os.listdir(f"/proc/{child}/task"):
                os.sched_setaffinity(int(task), core)
    except OSError as error:
        return f"not pinned ({error})"
    if not children:
        return f"not pinned (no wandb-core process found); this process on CPU {cpus[0]}"
    return f"pinned: this process on CPU {cpus[0]}, wandb-core {sorted(children)} on {sorted(core)}"


def new_run(name: str) -> Any:
    """A real offline wandb run in the benchmark's temp folder (system metrics off)."""
    run = wandb.init(
        mode="offline",
        dir=TMP,
        project="stepsync-bench",
        name=name,
        reinit="create_new",
        settings=wandb.Settings(
            x_disable_stats=True,
            x_disable_meta=True,
            disable_git=True,
            x_save_requirements=False,
            console="off",
        ),
    )
    _runs.append(run)
    if _pin["wanted"] and not _pin["done"]:
        _pin["done"] = True
        print(f"# {pin_cpus()}")
    return run


def caught_up(*runs: Any) -> None:
    """Wait until wandb-core has handled every row sent so far to ``runs``.

    ``run.step`` asks wandb-core, which answers after the rows queued before the question: one
    case's backlog then cannot slow the next case down.
    """
    for run in runs:
        run.step  # noqa: B018  (the question is the point)


def finish_runs() -> None:
    """Finish every run this process started (unpatched, so nothing is routed any more)."""
    stepsync.unpatch()
    for run in reversed(_runs):
        if not getattr(run, "_is_finished", False):
            run.finish()
    _runs.clear()


@dataclass
class Sink:
    """What the discarding sink received: committed rows (kept only when asked) and counts."""

    keep: bool = False
    rows: int = 0
    values: int = 0
    calls: list[tuple[float, int]] = field(default_factory=list)
    kept: list[Mapping[str, Any]] = field(default_factory=list)
    timestamps: bool = False


@contextlib.contextmanager
def discarding_sink(
    *, keep: bool = False, timestamps: bool = False, forward: bool = False
) -> Iterator[Sink]:
    """Replace stepsync's two calls into wandb (``_wandb.native_log``/``native_define_metric``).

    With ``forward=False`` the rows go nowhere (wandb excluded from the timing); with
    ``forward=True`` they still reach wandb and the sink only records when and where.
    """
    sink = Sink(keep=keep, timestamps=timestamps)
    saved_log, saved_define = _wandb.native_log, _wandb.native_define_metric
    clock = time.perf_counter
    ident = threading.get_ident

    def native_log(run: Any, data: Mapping[str, Any], step: int, shared: bool = False) -> int:
        if timestamps:
            sink.calls.append((clock(), ident()))
        sink.rows += 1
        sink.values += len(data) - 1  # the axis key is stepsync's, not a user value
        if keep:
            sink.kept.append(data)
        if forward:
            return saved_log(run, data, step, shared)
        return step

    def native_define_metric(run: Any, name: str, **options: Any) -> None:
        if forward:
            saved_define(run, name, **options)

    _wandb.native_log = native_log
    _wandb.native_define_metric = native_define_metric
    try:
        yield sink
    finally:
        _wandb.native_log, _wandb.native_define_metric = saved_log, saved_define


@dataclass(frozen=True)
class Timing:
    """One timed call: wall-clock seconds and CPU seconds of this process (all its threads)."""

    wall: float
    cpu: float


def timed(fn: Callable[[], object]) -> Timing:
    """Time one call of ``fn``, after a full garbage collection."""
    gc.collect()
    cpu, start = time.process_time(), time.perf_counter()
    fn()
    return Timing(time.perf_counter() - start, time.process_time() - cpu)


#: A benchmark case: an untimed setup (e.g. ``stepsync.patch``) and the timed body.
Case = tuple[Callable[[], object], Callable[[], object]]


def interleave(
    cases: Mapping[str, Case], reps: int, settle: Callable[[], object] = lambda: None
) -> dict[str, list[Timing]]:
    """Time every case once per repetition, flipping the order each time (setup untimed).

    Each case runs once untimed first: managers get created, keys declared, threads started.
    ``settle`` runs (untimed) after every case, e.g. to let wandb-core catch up.
    """
    names = list(cases)
    times: dict[str, list[Timing]] = {name: [] for name in names}
    for setup, body in cases.values():
        setup()
        body()
        settle()
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            setup, body = cases[name]
            setup()
            times[name].append(timed(body))
            settle()
    return times


def nothing() -> None:
    """The setup of a case that needs none."""


def median_ratio(top: list[Timing], bottom: list[Timing], *, cpu: bool = False) -> float:
    """Median of the paired per-repetition ratios ``top[i] / bottom[i]`` (wall or CPU time)."""
    if cpu:
        return statistics.median(a.cpu / b.cpu for a, b in zip(top, bottom, strict=True))
    return statistics.median(a.wall / b.wall for a, b in zip(top, bottom, strict=True))


def median_wall(times: list[Timing]) -> float:
    return statistics.median(t.wall for t in times)


def load_average() -> str:
    """The 1-minute load average, to judge how much other processes disturbed the figures."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


@dataclass
class Report:
    """Collects the figures of one script run; prints them and optionally writes JSON."""

    title: str
    figures: list[dict[str, Any]] = field(default_factory=list)

    def header(self, args: argparse.Namespace) -> None:
        print(f"# {self.title}")
        print(
            f"# python {sys.version.split()[0]}, wandb {wandb.__version__}, stepsync "
            f"{stepsync.__version__}, {os.cpu_count()} CPUs, "
            f"{'quick' if args.quick else 'full'} size, reps={args.reps}, "
            f"load average {load_average()} at start"
        )
        print("# command: " + " ".join(["python", *sys.argv]))

    def ratio(self, name: str, value: float, goal: float | None, detail: str) -> None:
        """One ratio figure with its goal (lower is better) and the absolute numbers behind it."""
        verdict = "" if goal is None else ("ok" if value <= goal else "MISSED")
        goal_text = "" if goal is None else f"goal <= {goal:g}"
        print(f"{name:<5} ratio={value:.4f}  {goal_text:<14} {verdict:<6} | {detail}")
        self.figures.append(
            {"figure": name, "ratio": value, "goal": goal, "ok": goal is None or value <= goal}
        )

    def value(self, name: str, text: str, ok: bool | None = None, **numbers: Any) -> None:
        """A non-ratio figure (memory, throughput, synchronous or not)."""
        verdict = "" if ok is None else ("ok" if ok else "MISSED")
        print(f"{name:<5} {text} {verdict}".rstrip())
        self.figures.append({"figure": name, "text": text, "ok": ok, **numbers})

    def note(self, text: str) -> None:
        print(f"      {text}")

    def finish(self, args: argparse.Namespace) -> int:
        print(f"# load average {load_average()} at end")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as out:
                json.dump({"title": self.title, "figures": self.figures}, out, indent=2)
        missed = [f["figure"] for f in self.figures if f.get("ok") is False]
        if missed:
            print(f"# goals missed: {', '.join(missed)}")
        return 1 if (args.check and missed) else 0


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, seconds)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument(
        "--profile", action="store_true", help="profile the routed hot path (discarding sink)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="this process on one CPU, wandb-core on the others: steadier figures (Linux)",
    )
    args = parser.parse_args()
    _pin["wanted"] = args.pin
    if args.reps is None:
        args.reps = 3 if args.quick else 21
    return args


def us(seconds: float) -> str:
    """Seconds as microseconds, 2 significant decimals for small values."""
    micro = seconds * 1e6
    return f"{micro:.2f} us" if micro < 100 else f"{micro:.0f} us"


def finite(value: float) -> bool:
    return math.isfinite(value) and value > 0
