"""Accelerate, two time scales: per-step values at ``step=global_step``, per-epoch values at
``step=epoch`` (long behind wandb's step by then). With stepsync both are kept.

Run: STEPSYNC_ENABLED=1 python examples/accelerate_loop.py   (no code change at all)
     python examples/accelerate_loop.py                      (plain wandb: epoch values dropped)
Offline and CPU only.
"""

from __future__ import annotations

import os
import tempfile

import torch
from accelerate import Accelerator

import stepsync
from stepsync.history import read_history

EPOCHS = 3


def main() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    out = tempfile.mkdtemp(prefix="stepsync-accelerate-")
    accelerator = Accelerator(cpu=True, log_with="wandb")
    accelerator.init_trackers("stepsync-accelerate", init_kwargs={"wandb": {"dir": out}})
    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randn(40, 1))
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    global_step = 0
    for epoch in range(EPOCHS):
        total = 0.0
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            accelerator.log({"train/loss": loss.item()}, step=global_step)
            total += loss.item()
            global_step += 1
        # As in Accelerate's own examples: the epoch summary logged at step=epoch.
        accelerator.log({"epoch/mean_loss": total / len(loader), "epoch": epoch}, step=epoch)
    run_dir = accelerator.get_tracker("wandb", unwrap=True).settings.sync_dir
    accelerator.end_training()
    rows = read_history(run_dir)
    steps = sum("train/loss" in row for row in rows)
    epochs = [row.get("stepsync/step", row["_step"]) for row in rows if "epoch/mean_loss" in row]
    print(
        f"{'stepsync' if stepsync.is_patched() else 'native wandb'}: kept {steps}/{global_step} "
        f"per-step values and {len(epochs)}/{EPOCHS} epoch values (at steps {epochs})"
    )


if __name__ == "__main__":
    main()
