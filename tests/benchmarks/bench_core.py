"""Benchmark: the 4-source x 3-key logging loop through stepsync against plain wandb.

Run: ``python tests/benchmarks/bench_core.py`` (``--quick`` for a smoke run, ``--pin`` for
steadier figures). Prints
B1   (stepsync loop, real wandb) / (the same loop as 4 native ``run.log(step=...)`` calls),
B1b  (stepsync loop, real wandb) / (one hand-merged native ``run.log`` call per step),
B1p, B1bp  the same with each source a ``@logs_metrics`` function,
B1r  (the row stepsync writes, by hand) / (the hand-merged call): the floor under B1b,
B1aa (the hand-merged loop on another run) / (itself): how exact the B1 figures can be,
B1f  (the same shape stripped of stepsync's guarantees) / (the hand-merged call): what they cost,
B2   stepsync's own cost per routed call (rows go to a discarding sink) / one native call.
The stepsync loop is the issue's: the patched ``run.log`` called from 4 places, one
``step_scope`` per step.
"""

from __future__ import annotations

import contextvars
import functools
import statistics
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from _harness import (
    SOURCES,
    Report,
    Timing,
    caught_up,
    discarding_sink,
    finish_runs,
    interleave,
    median_ratio,
    median_wall,
    new_run,
    nothing,
    parse_args,
    row,
    us,
)

import stepsync
from stepsync import _wandb, logs_metrics, step_scope

CALLS_PER_STEP = len(SOURCES)
AXIS = "stepsync/step"


class Steps:
    """Hands out fresh, increasing step ranges, so no repetition logs to an old step."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, count: int) -> range:
        start = self.next
        self.next += count
        return range(start, start + count)

    @staticmethod
    def of(run: Any) -> Steps:
        """The run's own counter: loops that share a run never log to each other's old steps."""
        counter: Steps = run.__dict__.setdefault("_bench_steps", Steps())
        return counter


def native_four_calls(run: Any, steps: int) -> Callable[[], None]:
    """Plain wandb: each of the 4 sources calls ``run.log(values, step=step)``."""
    counter = Steps.of(run)

    def loop() -> None:
        log = run.log

        def source(keys: tuple[str, str, str]) -> Callable[[int, float], None]:
            def produce(step: int, x: float) -> None:
                log(row(keys, x), step=step)

            return produce

        sources = [source(keys) for _, keys in SOURCES]
        for step in counter.take(steps):
            x = float(step)
            for produce in sources:
                produce(step, x)

    return loop


def merged_values(x: float) -> dict[str, float]:
    """The 4 sources' values of one step in one dict, as a user merging by hand builds it."""
    merged: dict[str, float] = {}
    for _, keys in SOURCES:
        merged.update(row(keys, x))
    return merged


def native_merged(run: Any, steps: int) -> Callable[[], None]:
    """Plain wandb, merged by hand: the 4 sources' values in one ``run.log`` call per step."""
    counter = Steps.of(run)

    def loop() -> None:
        log = run.log
        for step in counter.take(steps):
            log(merged_values(float(step)), step=step)

    return loop


def native_row(run: Any, steps: int) -> Callable[[], None]:
    """The row stepsync commits, written by hand: the merged values plus the axis key, its keys
    declared on the axis, through wandb's ``Run._log`` (what stepsync calls). Versus ``merged``,
    this is what stepsync's row costs wandb; versus ``stepsync_loop``, what stepsync's own work
    costs inside the real loop."""
    _wandb.native_define_metric(run, AXIS)
    for _, keys in SOURCES:
        for key in keys:
            _wandb.native_define_metric(run, key, step_metric=AXIS)
    counter = Steps.of(run)

    def loop() -> None:
        native_log = _wandb.native_log
        for step in counter.take(steps):
            merged = merged_values(float(step))
            merged[AXIS] = step
            native_log(run, merged, step)

    return loop


def stepsync_loop(
    run: Any,
    steps: int,
    *,
    producers: bool = True,
    scope: Callable[[int], AbstractContextManager[Any]] = step_scope,
) -> Callable[[], None]:
    """stepsync: one ``step_scope`` per step, 4 ``@logs_metrics`` sources calling ``run.log``.

    ``scope`` replaces ``step_scope`` (B1f runs the same user code through its prototype).
    """
    counter = Steps.of(run)

    def loop() -> None:
        log = run.log  # the patched Run.log

        def source(name: str, priority: int, keys: tuple[str, str, str]) -> Callable[..., None]:
            def produce(x: float) -> None:
                log(row(keys, x))

            return logs_metrics(name, priority)(produce) if producers else produce

        sources = [source(name, i, keys) for i, (name, keys) in enumerate(SOURCES)]
        for step in counter.take(steps):
            with scope(step):
                x = float(step)
                for produce in sources:
                    produce(x)

    return loop


class Floor:
    """B1f: stepsync's shape with its guarantees taken out, to show what they cost in the loop.

    A contextvar scope, a plain function on ``Run.log`` (as stepsync's) that copies each call's
    dict into its step's list under a lock, and one merged row (axis key included) per scope exit
    through stepsync's ``native_log``. Left out: argument checks, priorities and collision rules,
    steps outside scopes, late data, the idle timer, finished and disabled runs, more than one run.
    """

    def __init__(self) -> None:
        self.step: contextvars.ContextVar[int] = contextvars.ContextVar("floor")
        self.lock = threading.Lock()
        self.pending: dict[int, list[dict[str, Any]]] = {}
        self.original = _wandb.ORIGINALS["log"]
        pending, lock, current = self.pending, self.lock, self.step

        @functools.wraps(self.original)
        def log(run: Any, data: Any, *args: Any, **kwargs: Any) -> None:
            data = dict(data)
            step = current.get()
            lock.acquire()
            bucket = pending.get(step)
            if bucket is None:
                pending[step] = [data]
            else:
                bucket.append(data)
            lock.release()

        self.wrapper = log

    def on(self) -> None:
        stepsync.unpatch()
        _wandb.Run.log = self.wrapper

    def off(self) -> None:
        if _wandb.Run.__dict__["log"] is self.wrapper:
            _wandb.Run.log = self.original

    def loop(self, run: Any, steps: int) -> Callable[[], None]:
        _wandb.native_define_metric(run, AXIS)
        for _, keys in SOURCES:
            for key in keys:
                _wandb.native_define_metric(run, key, step_metric=AXIS)
        floor = self
        native_log = _wandb.native_log  # stepsync's own hand-off to Run._log

        class Scope:
            __slots__ = ("step", "token")

            def __init__(self, step: int) -> None:
                self.step = step

            def __enter__(self) -> None:
                self.token = floor.step.set(self.step)

            def __exit__(self, *exc: object) -> None:
                floor.step.reset(self.token)
                entries = floor.pending.pop(self.step, None)
                if entries:
                    merged: dict[str, Any] = {}
                    for data in entries:
                        merged |= data
                    merged[AXIS] = self.step
                    native_log(run, merged, self.step)

        return stepsync_loop(run, steps, producers=False, scope=Scope)  # the same user code


def bare_loop(steps: int) -> Callable[[], None]:
    """The user's own share of the loop (building the dicts, calling the sources), no logging."""

    def loop() -> None:
        def log(data: dict[str, float]) -> None:
            return None

        def source(keys: tuple[str, str, str]) -> Callable[[float], None]:
            def produce(x: float) -> None:
                log(row(keys, x))

            return produce

        sources = [source(keys) for _, keys in SOURCES]
        for step in range(steps):
            x = float(step)
            for produce in sources:
                produce(x)

    return loop


def empty_scopes(steps: int) -> Callable[[], None]:
    """Only the scopes: enter and leave ``step_scope`` once per step, nothing logged."""
    counter = Steps()
    counter.next = 10**9  # far above any step the routed loops use

    def loop() -> None:
        for step in counter.take(steps):
            with step_scope(step):
                pass

    return loop


def measure_core(args: Any, report: Report) -> dict[str, float]:
    """B1, B1b (real wandb) and B2 (discarding sink); returns the absolute numbers."""
    steps = 10 if args.quick else 150
    sink_steps = 50 if args.quick else 2000
    sink_run = new_run("sink")
    # Fresh runs each round: one run can be a few percent faster than another for the same
    # loop (B1aa shows it), so the repetitions are spread over several sets of runs.
    rounds = 1 if args.quick else -(-args.reps // 2)  # two repetitions a round: one each order
    reps = -(-args.reps // rounds)  # per round, rounded up
    times: dict[str, list[Timing]] = {}
    floor = Floor()

    def plain() -> None:
        floor.off()
        stepsync.unpatch()

    def routed() -> None:
        floor.off()
        stepsync.patch()

    for round_ in range(rounds):
        runs = {
            name: new_run(f"{name}-{round_}")
            for name in ("native4", "merged", "stepsync", "producers", "row", "again", "floor")
        }
        for name, timings in interleave(
            {
                "native4": (plain, native_four_calls(runs["native4"], steps)),
                "merged": (plain, native_merged(runs["merged"], steps)),
                "stepsync": (routed, stepsync_loop(runs["stepsync"], steps, producers=False)),
                "producers": (routed, stepsync_loop(runs["producers"], steps)),
                "row": (plain, native_row(runs["row"], steps)),
                "again": (plain, native_merged(runs["again"], steps)),
                "floor": (floor.on, floor.loop(runs["floor"], steps)),
            },
            reps,
            settle=functools.partial(caught_up, *runs.values()),
        ).items():
            times.setdefault(name, []).extend(timings)
        for name in ("stepsync", "producers"):
            stats = stepsync.get_manager(runs[name]).get_stats()
            assert stats["wandb_calls"] == steps * (reps + 1), stats  # one row per step
        plain()
        for run in runs.values():
            run.finish()
    native_step = median_wall(times["native4"]) / steps
    merged_step = median_wall(times["merged"]) / steps
    stepsync_step = median_wall(times["stepsync"]) / steps
    producers_step = median_wall(times["producers"]) / steps
    row_step = median_wall(times["row"]) / steps
    native_call = native_step / CALLS_PER_STEP
    for name, bottom, goal, what in (
        ("B1", "native4", 0.36, "4 native calls"),
        ("B1b", "merged", 1.05, "1 hand-merged native call"),
    ):
        report.ratio(
            name,
            median_ratio(times["stepsync"], times[bottom]),
            goal,
            f"per step: stepsync {us(stepsync_step)}, {what} "
            f"{us(median_wall(times[bottom]) / steps)}; CPU-time ratio "
            f"{median_ratio(times['stepsync'], times[bottom], cpu=True):.3f}",
        )
    for name, bottom in (("B1p", "native4"), ("B1bp", "merged")):
        report.ratio(
            name,
            median_ratio(times["producers"], times[bottom]),
            None,
            f"{name[:-1]} with each source a @logs_metrics function: {us(producers_step)} per step",
        )

    report.ratio(
        "B1r",
        median_ratio(times["row"], times["merged"]),
        None,
        f"B1b's floor: stepsync's row written by hand (axis key added, keys declared on the "
        f"axis, through Run._log) {us(row_step)} per step vs {us(merged_step)} merged",
    )
    report.ratio(
        "B1aa",
        median_ratio(times["again"], times["merged"]),
        None,
        "noise: the hand-merged loop on a second run / the same loop on the first (an A/A "
        "test: B1 and B1b are only as exact as this is close to 1)",
    )
    report.ratio(
        "B1f",
        median_ratio(times["floor"], times["merged"]),
        None,
        f"the same shape without stepsync's guarantees (no checks, priorities, late data, timer; "
        f"one run): {us(median_wall(times['floor']) / steps)} per step; B1b - B1f is what they "
        "cost inside the loop",
    )

    stepsync.patch()
    with discarding_sink() as sink:
        sink_times = interleave(
            {
                "routed": (nothing, stepsync_loop(sink_run, sink_steps, producers=False)),
                "producers": (nothing, stepsync_loop(sink_run, sink_steps)),
                "scopes": (nothing, empty_scopes(sink_steps)),
                "bare": (nothing, bare_loop(sink_steps)),
            },
            args.reps,
        )
    assert sink.rows == 2 * sink_steps * (args.reps + 1), sink  # every commit went there
    calls = sink_steps * CALLS_PER_STEP

    def per_call(name: str) -> float:
        """Median over repetitions of (case - bare loop) per call: stepsync's share only."""
        pairs = zip(sink_times[name], sink_times["bare"], strict=True)
        return statistics.median((t.wall - b.wall) / calls for t, b in pairs)

    routed, producers = per_call("routed"), per_call("producers")
    scope = median_wall(sink_times["scopes"]) / sink_steps
    report.ratio(
        "B2",
        routed / native_call,
        0.01,
        f"stepsync {us(routed)} per routed run.log call (its step_scope and commit amortized, "
        f"{CALLS_PER_STEP} calls/step) vs {us(native_call)} per native run.log call",
    )
    report.ratio(
        "B2p",
        producers / native_call,
        None,
        f"the same with each call made from a @logs_metrics source: {us(producers)} per call",
    )
    report.note(
        "B2 sink: stepsync._wandb.native_log/native_define_metric replaced by a counting no-op "
        "inside this benchmark only; the loop's own cost "
        f"({us(median_wall(sink_times['bare']) / calls)} per call) subtracted"
    )
    report.note(
        f"B2 breakdown: empty step_scope {us(scope)} per step; routed call + commit share "
        f"{us(routed - scope / CALLS_PER_STEP)}; @logs_metrics {us(producers - routed)} per call"
    )
    in_loop = stepsync_step - row_step
    report.note(
        f"B1b gap: stepsync's own work inside the real loop (B1 loop - B1r row) {us(in_loop)} "
        f"per step, x{in_loop / (routed * CALLS_PER_STEP):.1f} the same work timed alone (B2 x "
        f"{CALLS_PER_STEP} = {us(routed * CALLS_PER_STEP)})"
    )
    return {
        "native_call_s": native_call,
        "native_step_s": native_step,
        "merged_step_s": merged_step,
        "stepsync_step_s": stepsync_step,
        "routed_call_s": routed,
    }


def profile_hot_path(steps: int) -> None:
    """Profile the routed loop (discarding sink): pyinstrument when installed, else cProfile."""
    run = new_run("profile")
    stepsync.patch()
    loop = stepsync_loop(run, steps)
    with discarding_sink():
        loop()  # warm up: declare keys, start the flusher
        try:
            from pyinstrument import Profiler
        except ImportError:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.runcall(loop)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            return
        sampler = Profiler(interval=0.0001)
        sampler.start()
        loop()
        sampler.stop()
    print(sampler.output_text(unicode=False, color=False, show_all=True))


def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    report = Report("stepsync core benchmark (issue 2, item 6)")
    report.header(args)
    try:
        measure_core(args, report)
        if args.profile:
            profile_hot_path(200 if args.quick else 20000)
    finally:
        finish_runs()
    return report.finish(args)


if __name__ == "__main__":
    sys.exit(main())
