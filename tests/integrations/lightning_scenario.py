"""A tiny LightningModule with WandbLogger: 20 steps, validation every 5, and the user's own
``self.logger.experiment.log({...}, step=self.global_step)``. Plain user code: no stepsync import.

Usage: python lightning_scenario.py OUTPUT_DIR (frameworks imported in ``train``: cheap to collect)
"""

from __future__ import annotations

import sys
from typing import Any

STEPS = 20
VAL_EVERY = 5
USER_KEY = "user/global_step_seen"


def train(output_dir: str) -> None:
    """Fit for ``STEPS`` steps; WandbLogger starts an offline run under ``output_dir``."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import WandbLogger

    class TinyRegression(L.LightningModule):
        """One linear layer; logs through Lightning and directly to the wandb run."""

        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train/loss", loss)
            self.logger.experiment.log({USER_KEY: self.global_step}, step=self.global_step)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(STEPS * 4, 4), torch.randn(STEPS * 4, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=0)
    trainer = L.Trainer(
        max_steps=STEPS,
        val_check_interval=VAL_EVERY,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=WandbLogger(project="stepsync-integrations", save_dir=output_dir),
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyRegression(), loader, loader)
    trainer.logger.experiment.finish()


if __name__ == "__main__":
    train(sys.argv[1])
