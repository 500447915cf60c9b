"""Each step's metrics, and a callback that reports one step behind; then finish, exit or crash.

Unmodified user code (no stepsync import). Usage: python late_callback.py OUTPUT_DIR MODE
with MODE `finish` (run.finish()), `exit` (no finish: wandb's exit hook ends the run) or
`raise` (an uncaught exception ends the process).
"""

import sys

import wandb

STEPS = 8

run = wandb.init(project="stepsync-activation", dir=sys.argv[1])
for step in range(STEPS):
    wandb.log({"train/loss": step}, step=step)
    if step:
        wandb.log({"callback/step": step - 1}, step=step - 1)
wandb.log({"callback/step": STEPS - 1}, step=STEPS - 1)
if sys.argv[2] == "finish":
    run.finish()
elif sys.argv[2] == "raise":
    raise RuntimeError("training crashed")
