"""One rank of a distributed test job (gloo on CPU); writes what it saw to OUTDIR/rank<r>.json.

Usage: python _worker.py RANK WORLD_SIZE OUTDIR SCENARIO[,SCENARIO...]
Scenarios run in the order given, in one process group (torch is imported once per rank).
In "reduce", rank 0 logs to an offline wandb run under OUTDIR; the other ranks have no run.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import wandb

import stepsync
from stepsync.distributed import RankMismatchError, gather_step, synced_step_scope

STEPS = 6
REDUCE = {"tokens": "sum", "grad/*": "max", "lr": "min", "acc": "rank"}
#: The group timeout of the "lost" scenario: how long a rank may wait for one that never comes.
LOST_TIMEOUT = 5.0


def log_step(synced: Any, rank: int, world: int, step: int) -> None:
    """Rank ``rank``'s values of ``step``, in rank + 1 calls, slower on higher ranks."""
    values: dict[str, Any] = {
        "loss": step + rank,
        "tokens": 10 * (rank + 1),
        "grad/norm": rank * step,
        "lr": 0.1 * (rank + 1),
        "acc": rank / 10,
    }
    if rank == world - 1:
        values["only_last"] = 1.0 + step
        values["note"] = f"rank {rank} step {step}"
        if step == 0:
            values["samples"] = wandb.Table(columns=["rank", "step"], data=[[rank, step]])
    if rank == world - 1:
        values["loss"] = torch.tensor(float(step + rank))  # torch scalars reduce as numbers
    items = list(values.items())
    for i in range(rank + 1):
        # Different speeds on purpose: the ranks reach the exchange at different times.
        time.sleep(0.004 * rank)
        call = dict(items[i :: rank + 1])
        if rank == 0:
            wandb.log(call)  # the patched wandb.log: goes to the synced step on rank 0
        else:
            synced.log(call)  # no wandb run on this rank


def reduce_scenario(out: Path, rank: int, world: int) -> dict[str, Any]:
    """Six synced steps; the last rank raises (and catches) an error inside step 3's block."""
    run = None
    if rank == 0:
        stepsync.patch()
        run = wandb.init(mode="offline", dir=out, project="stepsync-distributed")
    dist.barrier()  # every rank starts timing together, after rank 0's wandb.init
    results = []
    failures = 0
    started = time.perf_counter()
    for step in range(STEPS):
        try:
            with synced_step_scope(step, reduce=REDUCE) as synced:
                log_step(synced, rank, world, step)
                if step == 3 and rank == world - 1:
                    raise ValueError("a recoverable error inside the block")
        except ValueError:
            failures += 1
        results.append(synced.result)
    report: dict[str, Any] = {
        "results": results,
        "failures": failures,
        "seconds": time.perf_counter() - started,
    }
    if run is not None:
        report["run_dir"] = run.settings.sync_dir
        report["stats"] = stepsync.get_manager(run).get_stats()
        run.finish()
    return report


def gather_scenario(rank: int, world: int) -> dict[str, Any]:
    """``gather_step`` directly, once with a payload far larger than the first frame size."""
    small = gather_step({"x": rank, "only0": 1.5} if rank == 0 else {"x": rank}, 0, reduce="sum")
    big = gather_step({f"key{i:04d}": float(rank) for i in range(rank * 800)}, 1, reduce="max")
    return {"small": small, "big_keys": None if big is None else len(big)}


def skip_scenario(rank: int) -> dict[str, Any]:
    """Rank 1 skips step 2: every rank must raise RankMismatchError at the next exchange."""
    done = []
    try:
        for step in range(STEPS):
            if rank == 1 and step == 2:
                continue
            with synced_step_scope(step) as synced:
                synced.log({"loss": float(rank)})
            done.append(step)
    except RankMismatchError as error:
        return {"error": type(error).__name__, "message": str(error), "steps": error.steps}
    return {"error": None, "done": done}


def lost_scenario(rank: int) -> dict[str, Any]:
    """Rank 1 never joins step 1 but stays alive: rank 0 must raise after the group's timeout."""
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=LOST_TIMEOUT))
    with synced_step_scope(0, group=group) as synced:
        synced.log({"loss": float(rank)})
    if rank != 0:
        sys.stdin.read()  # alive and in the group, never at step 1, until the parent says so
        return {"error": None}
    started = time.monotonic()
    try:
        with synced_step_scope(1, group=group) as synced:
            synced.log({"loss": 0.0})
    except RankMismatchError as error:
        return {
            "error": type(error).__name__,
            "message": str(error),
            "steps": error.steps,
            "waited": time.monotonic() - started,
        }
    return {"error": None}


def main() -> None:
    rank, world, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out / 'rendezvous'}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    report: dict[str, Any] = {}
    for scenario in sys.argv[4].split(","):
        if scenario == "reduce":
            report[scenario] = reduce_scenario(out, rank, world)
        elif scenario == "gather":
            report[scenario] = gather_scenario(rank, world)
        elif scenario == "skip":
            report[scenario] = skip_scenario(rank)
        elif scenario == "lost":
            report[scenario] = lost_scenario(rank)
        (out / f"rank{rank}.json").write_text(json.dumps(report, default=repr))
    sys.stdout.flush()
    sys.stderr.flush()
    # A group left broken on purpose ("lost") can abort in gloo's teardown; the report is written.
    os._exit(0)


if __name__ == "__main__":
    main()
