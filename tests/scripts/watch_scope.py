"""A training loop with wandb.watch-style gradient logging (`run._log(..., commit=False)`).

The loop marks each step with stepsync's `step_scope` but never calls `stepsync.patch()`: the
patch comes from the environment or not at all. Usage: python watch_scope.py OUTPUT_DIR
"""

import sys

import wandb

from stepsync import step_scope

STEPS = 6

run = wandb.init(project="stepsync-activation", dir=sys.argv[1])
for step in range(STEPS):
    with step_scope(step):
        # What wandb.watch's backward hooks do: a direct, uncommitted `_log`.
        wandb.run._log(
            {"gradients/w": wandb.Histogram([step, step + 1, step + 2]), "gradients/norm": step},
            commit=False,
        )
        wandb.log({"loss": step}, step=step)
run.finish()
