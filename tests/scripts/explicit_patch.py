"""The explicit API (for `python -S`, frozen apps): `stepsync.patch()` before or after `wandb.init`.

Usage: python explicit_patch.py OUTPUT_DIR WHEN, WHEN being `before-init`, `after-init` or `never`.
"""

import sys

import wandb

import stepsync

STEPS = 6
when = sys.argv[2]

if when == "before-init":
    stepsync.patch()
run = wandb.init(project="stepsync-activation", dir=sys.argv[1])
if when == "after-init":
    stepsync.patch()  # wandb.log was bound to the run at init: the patch re-points it
for step in range(STEPS):
    wandb.log({"train/loss": step}, step=step)
    if step:
        run.log({"callback/step": step - 1}, step=step - 1)
run.log({"callback/step": STEPS - 1}, step=STEPS - 1)
run.finish()
