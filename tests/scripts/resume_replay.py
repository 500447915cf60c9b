"""A job that restarts from its step-6 checkpoint inside the same run and logs steps 6..11 again.

Unmodified user code (no stepsync import). Usage: python resume_replay.py OUTPUT_DIR
"""

import sys

import wandb

run = wandb.init(project="stepsync-activation", dir=sys.argv[1])
for step in range(10):
    wandb.log({"loss": 100 + step}, step=step)
# Restored from the checkpoint at step 6: the replayed steps carry the values that count.
for step in range(6, 12):
    wandb.log({"loss": 200 + step}, step=step)
run.finish()
