"""Benchmark: every performance figure of stepsync (B1-B7), from one process.

Run: ``python tests/benchmarks/bench_perf.py`` (``--quick`` for a smoke run, ``--json PATH``
to keep the figures, ``--check`` to exit 1 when a goal is missed, ``--pin`` for steadier
figures: this process on one CPU, wandb-core on the others). B1, B1b and B2 come from
bench_core.py; this script adds memory (B3), threads (B4), scope-exit latency (B5), how the
cost grows with keys and pending steps (B6) and what snapshotting a logged value at the call
costs (B7).
"""

from __future__ import annotations

import gc
import itertools
import statistics
import sys
import threading
import time
import tracemalloc
from typing import Any

import numpy as np
from _harness import (
    Case,
    Report,
    Timing,
    caught_up,
    discarding_sink,
    finish_runs,
    interleave,
    new_run,
    nothing,
    parse_args,
    us,
)
from bench_core import Steps, measure_core

import stepsync
from stepsync import StepManager, step_scope
from stepsync._capture import capture

AXIS = "stepsync/step"
KEYS10 = tuple(f"train/metric_{i}" for i in range(10))


def measure_memory(args: Any, report: Report) -> None:
    """B3: memory held by 100 pending steps x 10 float keys (nothing commits meanwhile)."""
    run = new_run("memory")
    manager = StepManager(run, buffer_size=10**6, flush_interval=3600.0)
    log = run.log  # patched: routed to `manager`
    values = [float(i) + 0.5 for i in range(1000)]  # warm the float allocator

    def held(steps: range, calls_per_step: int) -> tuple[int, int]:
        """Bytes traced after logging ``steps`` (all pending), and bytes of the data alone."""
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for step in steps:
            if calls_per_step == 1:
                log({key: step + i * 0.001 for i, key in enumerate(KEYS10)}, step=step)
            else:
                for i, key in enumerate(KEYS10):
                    log({key: step + i * 0.001}, step=step)
        gc.collect()
        total = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        # The same values in plain dicts, one per step: what the user's data itself weighs.
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        data = [{key: step + i * 0.001 for i, key in enumerate(KEYS10)} for step in steps]
        raw = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        del data
        return total, raw

    stepsync.patch()
    with discarding_sink():
        log({"warmup": 0.0}, step=0)  # the manager's first bucket, its flusher thread
        manager.flush()
        total, raw = held(range(10, 110), 1)
        assert manager.get_stats()["pending_steps"] == 100
        manager.flush()
        split_total, _ = held(range(200, 300), 10)
        manager.flush()
    del values
    report.value(
        "B3",
        f"{total / 1024:.1f} KB held by 100 pending steps x 10 float keys (goal <= 100 KB)",
        ok=total <= 100 * 1024,
        bytes=total,
    )
    report.note(
        f"per step {total / 100:.0f} B, of which the values in a plain dict {raw / 100:.0f} B; "
        f"the same 10 keys as 10 calls of 1 key per step: {split_total / 1024:.1f} KB"
    )


def measure_threads(args: Any, report: Report) -> None:
    """B4: 8 threads x 50,000 routed calls into the discarding sink; calls/s and values lost."""
    threads_n = 8
    calls = 500 if args.quick else 50_000
    stepsync.patch()
    results: dict[int, tuple[float, int, int]] = {}
    for n_threads in (1, threads_n):
        run = new_run(f"threads-{n_threads}")
        manager = stepsync.get_manager(run)  # defaults: buffer_size=100, flush_interval=2.0
        log = run.log
        start_gate = threading.Barrier(n_threads + 1)

        def worker(index: int, log: Any = log, gate: threading.Barrier = start_gate) -> None:
            key = f"thread_{index}/value"
            gate.wait()
            for step in range(calls):
                log({key: step}, step=step)

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
        with discarding_sink(keep=True) as sink:
            for thread in workers:
                thread.start()
            gc.collect()
            start_gate.wait()
            start = time.perf_counter()
            for thread in workers:
                thread.join()
            elapsed = time.perf_counter() - start
            manager.flush()
        # Every value must arrive exactly once, in a row whose axis key is its own step.
        seen: dict[str, int] = {}
        misplaced = 0
        for row in sink.kept:
            step = row[AXIS]
            for key, value in row.items():
                if key != AXIS:
                    seen[key] = seen.get(key, 0) + 1
                    misplaced += value != step
        sent = n_threads * calls
        received = sum(seen.values())
        lost = sent - received + misplaced
        results[n_threads] = (sent / elapsed, lost, manager.get_stats()["late_logs"])
        del sink
    rate, lost, late = results[threads_n]
    single_rate = results[1][0]
    report.value(
        "B4",
        f"{threads_n} threads x {calls:,} routed calls: {rate:,.0f} calls/s, {lost} values lost "
        f"(goal: 0 lost)",
        ok=lost == 0,
        calls_per_s=rate,
        lost=lost,
    )
    report.note(
        f"1 thread: {single_rate:,.0f} calls/s; {late:,} of the {threads_n}-thread calls came "
        "late (a thread behind the others) and landed in extra rows at their true step"
    )


def measure_latency(args: Any, report: Report) -> None:
    """B5: a scope's exit calls wandb synchronously, on its own thread, before the exit returns."""
    run = new_run("latency")
    stepsync.patch()
    log = run.log
    count = 20 if args.quick else 200
    log({"warmup": 0.0})
    with step_scope(0):
        log({"warmup": 1.0})
    delays: list[float] = []
    synchronous = 0
    me = threading.get_ident()
    with discarding_sink(timestamps=True, forward=True) as sink:  # rows still reach wandb
        for step in range(1, count + 1):
            with step_scope(step):
                log({"loss": 1.0 / step})
                before_exit = time.perf_counter()
            after_exit = time.perf_counter()
            called_at, thread = sink.calls[-1]
            synchronous += thread == me and before_exit <= called_at <= after_exit
            delays.append(called_at - before_exit)
    report.value(
        "B5",
        f"scope exit -> wandb call: synchronous in {synchronous}/{count} steps (same thread, "
        f"before the exit returns), median {us(statistics.median(delays))}, "
        f"max {us(max(delays))}; no timer in between",
        ok=synchronous == count,
        median_s=statistics.median(delays),
    )


def median_cpu(times: list[Timing]) -> float:
    return statistics.median(t.cpu for t in times)


def measure_growth(args: Any, report: Report) -> None:
    """B6: cost per routed call at 1 to 1,000 keys per call, and with 10,000 pending steps.

    Everything here goes to the discarding sink, so all the work is stepsync's, on this thread:
    CPU time is the figure (it does not count time lost to other processes).
    """
    stepsync.patch()
    run = new_run("growth-keys")
    cost: dict[int, float] = {}
    sizes = (1, 10, 100, 1000)
    sources = 4
    with discarding_sink():
        for size in sizes:
            steps = 20 if args.quick else max(50, 20_000 // size)
            datas = [{f"s{s}/key_{k}": float(k) for k in range(size)} for s in range(sources)]
            counter = Steps()
            counter.next = 10**6 * size  # every size in its own step range

            def loop(
                datas: list[dict[str, float]] = datas, counter: Steps = counter, steps: int = steps
            ) -> None:
                log = run.log
                for step in counter.take(steps):
                    with step_scope(step):
                        for data in datas:
                            log(data)

            times = interleave({"keys": (nothing, loop)}, args.reps)
            cost[size] = median_cpu(times["keys"]) / (steps * sources)
    # Marginal cost of one more key, between successive sizes: equal for a linear cost.
    marginal = {
        high: (cost[high] - cost[low]) / (high - low) for low, high in itertools.pairwise(sizes)
    }
    growth = marginal[1000] / marginal[100]
    report.value(
        "B6a",
        f"linear in keys: one more key costs {us(marginal[100])} between 10 and 100 keys, "
        f"{us(marginal[1000])} between 100 and 1,000 (x{growth:.2f}); "
        f"{us(cost[1])} per call at 1 key",
        ok=growth <= 2.0,
        per_call_s={str(k): v for k, v in cost.items()},
    )
    report.note(
        "CPU time per routed call (scope, commit amortized, 4 calls/step): "
        + ", ".join(f"{size} keys {us(cost[size])}" for size in sizes)
    )

    pending = 500 if args.quick else 10_000
    calls = 200 if args.quick else 4000
    empty_run, loaded_run = new_run("growth-empty"), new_run("growth-pending")
    managers = {
        run_: StepManager(run_, buffer_size=10**9, flush_interval=3600.0)
        for run_ in (empty_run, loaded_run)
    }
    data = {"a": 1.0, "b": 2.0, "c": 3.0}
    cases: dict[str, Case] = {}
    with discarding_sink():
        for step in range(10**7, 10**7 + pending):  # parked far above the loop's steps
            loaded_run.log({"parked": 1.0}, step=step)
        for label, run_ in (("empty", empty_run), ("loaded", loaded_run)):
            scoped, explicit = Steps(), Steps()
            explicit.next = 5 * 10**6

            def in_scopes(log: Any = run_.log, scoped: Steps = scoped) -> None:
                for step in scoped.take(calls // 4):
                    with step_scope(step):
                        log(data)
                        log(data)
                        log(data)
                        log(data)

            def buffered(log: Any = run_.log, explicit: Steps = explicit) -> None:
                for step in explicit.take(calls):
                    log(data, step=step)

            cases[f"{label} scopes"] = (nothing, in_scopes)
            cases[f"{label} buffered"] = (nothing, buffered)
        # Both managers see every scope (scopes notify all live managers): a fair comparison.
        times = interleave(cases, args.reps)
        still = managers[loaded_run].get_stats()["pending_steps"]
        for manager in managers.values():
            manager.flush()
    assert still >= pending, still  # nothing of the parked steps was committed meanwhile
    ratios = {
        kind: median_cpu(times[f"loaded {kind}"]) / median_cpu(times[f"empty {kind}"])
        for kind in ("scopes", "buffered")
    }
    report.value(
        "B6b",
        f"flat in pending steps: with {pending:,} pending steps a routed call costs "
        f"x{ratios['scopes']:.2f} (in scopes, committing) and x{ratios['buffered']:.2f} "
        "(explicit steps, buffered) of its cost with none pending",
        ok=max(ratios.values()) <= 1.25,
        ratios=ratios,
    )
    for kind, text in (("scopes", "in scopes, 4 calls/step"), ("buffered", "explicit step")):
        report.note(
            f"{text}: {us(median_cpu(times[f'empty {kind}']) / calls)} per call with none "
            f"pending, {us(median_cpu(times[f'loaded {kind}']) / calls)} with {pending:,}"
        )


#: B7's cases: figure, what the data is, the data, and native/capture calls per repetition
#: (full size, quick size). capture takes more calls where one call is short, for a steadier clock.
CAPTURE_CASES: tuple[tuple[str, str, dict[str, Any], tuple[int, int], tuple[int, int]], ...] = (
    ("B7a", "1 float key", {"k0": 0.5}, (200, 20), (2000, 200)),
    ("B7b", "10 float keys", {f"k{i}": i + 0.5 for i in range(10)}, (200, 20), (2000, 200)),
    ("B7c", "100 float keys", {f"k{i}": i + 0.5 for i in range(100)}, (50, 5), (500, 50)),
    (
        "B7d",
        "10 keys of nested dicts, an 8-float numpy array each",
        {f"k{i}": {"v": np.arange(8.0)} for i in range(10)},
        (100, 10),
        (100, 10),
    ),
    (
        "B7e",
        "one 1 MB numpy array (131,072 floats)",
        {"k0": np.random.default_rng(0).random(131072)},
        (15, 3),
        (15, 3),
    ),
)


def measure_capture(args: Any, report: Report) -> None:
    """B7: ``stepsync._capture.capture(data)`` per call vs one plain (unpatched) ``run.log(data)``.

    Both sides get the same data object every call (wandb leaves the caller's objects as they
    are). The native calls go to one offline run, asked for ``run.step`` after every case.
    """
    stepsync.unpatch()
    run = new_run("capture-native")
    cases: dict[str, Case] = {}
    calls: dict[str, int] = {}
    for name, _, data, native_calls, capture_calls in CAPTURE_CASES:
        native_n = native_calls[1] if args.quick else native_calls[0]
        capture_n = capture_calls[1] if args.quick else capture_calls[0]

        def native(data: dict[str, Any] = data, n: int = native_n) -> None:
            log = run.log
            for _ in range(n):
                log(data)

        def captured(data: dict[str, Any] = data, n: int = capture_n) -> None:
            for _ in range(n):
                capture(data)

        cases[f"{name} native"], calls[f"{name} native"] = (stepsync.unpatch, native), native_n
        cases[f"{name} capture"], calls[f"{name} capture"] = (nothing, captured), capture_n
    times = interleave(cases, args.reps, settle=lambda: caught_up(run))

    def per_call(case: str, cpu: bool = False) -> list[float]:
        return [(t.cpu if cpu else t.wall) / calls[case] for t in times[case]]

    for name, what, _, _, _ in CAPTURE_CASES:
        top, bottom = f"{name} capture", f"{name} native"
        ratios = {
            kind: statistics.median(
                c / n for c, n in zip(per_call(top, cpu), per_call(bottom, cpu), strict=True)
            )
            for kind, cpu in (("wall", False), ("cpu", True))
        }
        report.ratio(
            name,
            ratios["wall"],
            None,
            f"{what}: capture {us(statistics.median(per_call(top)))} per call vs "
            f"{us(statistics.median(per_call(bottom)))} per native run.log call; CPU-time ratio "
            f"{ratios['cpu']:.3f}",
        )
    report.note(
        "B7: capture(data) is the snapshot stepsync takes at the call (wandb serializes inside "
        "run.log, stepsync commits later); native = one unpatched run.log(data) on an offline run"
    )
    report.note(
        "B7e: an array over 32 elements becomes a histogram at the call, in capture (wandb's own "
        "conversion) as in run.log: the same work wandb does natively at its call, done once"
    )


def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    report = Report("stepsync performance benchmark (issue 6: B1-B7)")
    report.header(args)
    try:
        for measure in (
            measure_core,
            measure_memory,
            measure_threads,
            measure_latency,
            measure_growth,
            measure_capture,
        ):
            measure(args, report)
            finish_runs()  # scopes notify every live manager: keep only this section's alive
            gc.collect()
    finally:
        finish_runs()
    return report.finish(args)


if __name__ == "__main__":
    sys.exit(main())
