"""stepsync imported before wandb (for its decorator); the patch itself comes from the environment.

Usage: python stepsync_first.py OUTPUT_DIR
"""

# isort: skip_file
import sys

from stepsync import logs_metrics
import wandb

STEPS = 6


@logs_metrics("eval", priority=1)
def report(step: int) -> None:
    """An evaluation callback that reports one step behind the training loop."""
    wandb.log({"eval/step": step}, step=step)


run = wandb.init(project="stepsync-activation", dir=sys.argv[1])
for step in range(STEPS):
    wandb.log({"train/loss": step}, step=step)
    if step:
        report(step - 1)
report(STEPS - 1)
run.finish()
