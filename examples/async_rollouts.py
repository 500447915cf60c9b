"""RL-style asyncio rollouts: many tasks report into the step that launched them.

Tasks inherit the active ``step_scope`` (contextvars), so a rollout that finishes after the
learner moved on still lands at its own step (as a late row on the step's axis), never dropped.

Run: python examples/async_rollouts.py   (wandb offline, no account needed)
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile

import wandb

import stepsync
from stepsync.history import read_history


@stepsync.logs_metrics("rollout", priority=5)
async def rollout(worker: int, step: int) -> dict[str, float]:
    await asyncio.sleep(random.random() / 200)  # simulated environment time
    return {f"rollout/return_w{worker}": float(step + worker)}


@stepsync.logs_metrics("learner", priority=0)
def learn(step: int) -> dict[str, float]:
    return {"learner/loss": 1.0 / (step + 1)}


async def main(steps: int = 30, workers: int = 4) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    stepsync.patch()
    run = wandb.init(project="stepsync-async", dir=tempfile.mkdtemp(prefix="stepsync-"))
    stragglers: list[asyncio.Task[dict[str, float]]] = []
    for step in range(steps):
        with stepsync.step_scope(step):
            tasks = [asyncio.create_task(rollout(w, step)) for w in range(workers)]
            done = await asyncio.gather(*tasks[:-1])  # the last worker is a straggler
            stragglers.append(tasks[-1])
            learn(step)
            assert len(done) == workers - 1
    await asyncio.gather(*stragglers)
    stats = stepsync.get_manager(run).get_stats()
    run_dir = run.settings.sync_dir
    run.finish()
    rows = read_history(run_dir)
    kept = sum(1 for row in rows for key in row if key.startswith("rollout/"))
    print(
        f"rollout values logged={steps * workers} kept={kept} late={stats['late_logs']} "
        f"rows={len(rows)} wandb_calls={stats['wandb_calls']}"
    )


if __name__ == "__main__":
    asyncio.run(main())
