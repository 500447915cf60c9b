"""Lightning + WandbLogger + ``self.logger.experiment.log(..., step=self.global_step)``: all kept.

Run: STEPSYNC_ENABLED=1 python examples/lightning_module.py   (no code change at all)
     python examples/lightning_module.py                      (plain wandb: values dropped)
Offline and CPU only. ``stepsync.patch()`` before ``trainer.fit`` works the same as the variable.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

import stepsync
from stepsync.history import read_history

STEPS = 20


class TinyRegression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)  # WandbLogger writes it step-less, with trainer/global_step
        # Logged straight to the run at the trainer's step: plain wandb drops most of these.
        self.logger.experiment.log(
            {"user/weight_norm": self.layer.weight.norm().item()}, step=self.global_step
        )
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # keep the output short
    warnings.filterwarnings("ignore", module="lightning")
    out = tempfile.mkdtemp(prefix="stepsync-lightning-")
    data = torch.utils.data.TensorDataset(torch.randn(STEPS * 4, 4), torch.randn(STEPS * 4, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    logger = WandbLogger(project="stepsync-lightning", save_dir=out)
    trainer = L.Trainer(
        max_steps=STEPS,
        val_check_interval=5,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=logger,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyRegression(), loader, loader)
    run_dir = logger.experiment.settings.sync_dir
    logger.experiment.finish()
    rows = read_history(run_dir)
    kept = [row for row in rows if "user/weight_norm" in row]
    vals = [row["trainer/global_step"] for row in rows if "val/loss" in row]
    print(
        f"{'stepsync' if stepsync.is_patched() else 'native wandb'}: "
        f"kept {len(kept)}/{STEPS} user values; validation rows at steps {vals}"
    )


if __name__ == "__main__":
    main()
