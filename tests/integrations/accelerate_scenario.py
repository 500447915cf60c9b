"""An Accelerate loop logging on two time scales, as Accelerate's own examples do: per step at
``step=global_step`` and, after each epoch, epoch means at ``step=epoch`` (which wandb has long
passed). Plain user code: no stepsync import, and wandb is only imported by Accelerate.

Usage: python accelerate_scenario.py OUTPUT_DIR (frameworks imported in ``train``)
"""

from __future__ import annotations

import sys

EPOCHS = 3
STEPS_PER_EPOCH = 10


def train(output_dir: str) -> None:
    """Train a linear layer; Accelerate's wandb tracker starts an offline run under output_dir."""
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, log_with="wandb")
    accelerator.init_trackers("stepsync-integrations", init_kwargs={"wandb": {"dir": output_dir}})
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(STEPS_PER_EPOCH * 4, 4), torch.randn(STEPS_PER_EPOCH * 4, 1)
    )
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=0)
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
        accelerator.log({"epoch/mean_loss": total / len(loader), "epoch": epoch}, step=epoch)
    accelerator.end_training()


if __name__ == "__main__":
    train(sys.argv[1])
