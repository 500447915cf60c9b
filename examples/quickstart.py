"""Quickstart: three sources log to one step; stepsync commits one row per step and loses nothing.

Run: python examples/quickstart.py   (wandb offline, no account needed)
"""

from __future__ import annotations

import os
import tempfile

import wandb

import stepsync
from stepsync.history import read_history


@stepsync.logs_metrics("trainer", priority=0)
def train_step(step: int) -> dict[str, float]:
    return {"train/loss": 1.0 / (step + 1), "lr": 1e-3}


@stepsync.logs_metrics("eval", priority=1)
def evaluate(step: int) -> dict[str, float]:
    return {"eval/acc": step / 10, "lr": -1.0}  # "lr" collides: the trainer (priority 0) wins


def main() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    workdir = tempfile.mkdtemp(prefix="stepsync-quickstart-")
    stepsync.patch()  # or run the unmodified script with STEPSYNC_ENABLED=1
    run = wandb.init(project="stepsync-quickstart", dir=workdir)
    for step in range(10):
        with stepsync.step_scope(step):
            train_step(step)
            if step % 3 == 0:
                evaluate(step)
            wandb.log({"callback/grad_norm": 0.1 * step}, step=step)  # a callback's own call
    # An evaluation thread that reports late, for step 4, after step 9 was committed:
    wandb.log({"eval/late_acc": 0.4}, step=4)
    stats = stepsync.get_manager(run).get_stats()
    run_dir = run.settings.sync_dir
    run.finish()

    rows = read_history(run_dir)
    print(
        f"{stats['total_logs']} log calls -> {stats['wandb_calls']} wandb calls, "
        f"{stats['late_logs']} late, {stats['dropped_logs']} dropped"
    )
    for row in rows:
        user = {k: v for k, v in row.items() if not k.startswith("_")}
        print(f"_step={row['_step']:>2}  {user}")
    print(f"offline run: {run_dir}")


if __name__ == "__main__":
    main()
