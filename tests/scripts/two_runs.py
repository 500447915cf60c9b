"""Two live runs in one process (`reinit="create_new"`), each with a callback one step behind.

Unmodified user code (no stepsync import). Usage: python two_runs.py OUTPUT_DIR
"""

import sys

import wandb

STEPS = 6

first = wandb.init(project="stepsync-activation", dir=sys.argv[1], reinit="create_new")
second = wandb.init(project="stepsync-activation", dir=sys.argv[1], reinit="create_new")
for step in range(STEPS):
    first.log({"first/loss": step}, step=step)
    second.log({"second/loss": step}, step=step)
    if step:
        first.log({"first/late": step - 1}, step=step - 1)
        second.log({"second/late": step - 1}, step=step - 1)
first.log({"first/late": STEPS - 1}, step=STEPS - 1)
second.log({"second/late": STEPS - 1}, step=STEPS - 1)
second.finish()
first.finish()
