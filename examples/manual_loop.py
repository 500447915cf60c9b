"""A hand-written loop: scopes, ``@logs_metrics`` producers, and an eval thread that reports late.

Run: python examples/manual_loop.py   (wandb offline, no account needed)
"""

from __future__ import annotations

import math
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor

import wandb

import stepsync
from stepsync.history import read_history


class Trainer:
    @stepsync.logs_metrics("trainer", priority=0)
    def step(self, step: int) -> dict[str, float]:
        return {"train/loss": math.exp(-step / 10), "train/lr": 3e-4}


@stepsync.logs_metrics("eval", priority=1)
def evaluate(step: int) -> dict[str, float]:
    return {"eval/loss": math.exp(-step / 12), "train/lr": 0.0}  # collides with the trainer


@stepsync.logs_metrics("debug", priority=10)
def debug_stats(step: int) -> None:
    wandb.log({"debug/step_parity": step % 2})  # plain wandb.log inside a producer


def main(steps: int = 40) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    stepsync.patch()
    run = wandb.init(project="stepsync-manual-loop", dir=tempfile.mkdtemp(prefix="stepsync-"))
    trainer = Trainer()
    pending: list[Future[dict[str, float]]] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for step in range(steps):
            with stepsync.step_scope(step):
                trainer.step(step)
                debug_stats(step)
                if step % 10 == 0:
                    # The eval job runs in a thread after the loop has moved on; propagate()
                    # carries step and source, so its values still land at `step`.
                    pending.append(pool.submit(stepsync.propagate(evaluate), step))
        for future in pending:
            future.result()
    stats = stepsync.get_manager(run).get_stats()
    run_dir = run.settings.sync_dir
    run.finish()
    rows = read_history(run_dir)
    evals = sorted(row["stepsync/step"] for row in rows if "eval/loss" in row)
    print(
        f"rows={len(rows)} wandb_calls={stats['wandb_calls']} late={stats['late_logs']} "
        f"key_conflicts={stats['key_conflicts']} dropped={stats['dropped_logs']}"
    )
    print(f"eval values kept at logical steps {evals}")


if __name__ == "__main__":
    main()
