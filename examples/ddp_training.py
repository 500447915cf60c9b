"""DDP on CPU (gloo): every rank logs its own loss; rank 0's run gets one combined row per step.

Run: torchrun --nproc-per-node 2 examples/ddp_training.py   (wandb offline, no account needed)
Also runs as plain ``python examples/ddp_training.py``: a group of one, the same rows.
"""

from __future__ import annotations

import datetime
import os
import tempfile

import torch
import torch.distributed as dist
import wandb
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import stepsync
from stepsync.distributed import synced_step_scope
from stepsync.history import read_history

STEPS = 12
BATCH = 16
# Mean is the default; these keys are combined differently.
REDUCE = {
    "train/samples": "sum",  # samples seen by the whole job in this step
    "train/grad_norm": "max",
    "data/*": "rank",  # one key per rank: data/shard -> rank0/data/shard, rank1/data/shard
}


def main() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    distributed = "RANK" in os.environ  # set by torchrun
    if distributed:
        # A bounded wait: a rank that skips a synced step makes the others fail within 60 s.
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank() if distributed else 0

    run = None
    if rank == 0:  # the other ranks have no wandb run: they log through the synced step
        stepsync.patch()
        run = wandb.init(project="stepsync-ddp", dir=tempfile.mkdtemp(prefix="stepsync-ddp-"))

    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    if distributed:
        model = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(rank)  # each rank its own data shard
    target = torch.arange(8, dtype=torch.float32) / 8

    for step in range(STEPS):
        with synced_step_scope(step, reduce=REDUCE) as synced:
            inputs = torch.randn(BATCH, 8, generator=generator)
            loss = nn.functional.mse_loss(model(inputs).squeeze(1), inputs @ target)
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            synced.log(
                {
                    "train/loss": loss.detach(),  # a torch scalar: reduced as a number
                    "train/samples": BATCH,
                    "train/grad_norm": grad_norm,
                    "data/shard": rank,
                }
            )
            if rank == 0 and step % 4 == 0:
                wandb.log({"eval/score": 1.0 - loss.item()})  # rank 0 alone: kept as is

    if run is not None:
        run_dir = run.settings.sync_dir
        run.finish()
        rows = read_history(run_dir)
        print(f"rank 0 kept {len(rows)} rows, one per step:")
        for row in rows:
            shown = {k: _short(v) for k, v in sorted(row.items()) if not k.startswith("_")}
            print(f"  _step={row['_step']:>2} {shown}")
        print(f"offline run: {run_dir}")
    if distributed:
        dist.destroy_process_group()


def _short(value: object) -> object:
    return round(value, 4) if isinstance(value, float) else value


if __name__ == "__main__":
    main()
