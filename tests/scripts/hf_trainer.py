"""A Hugging Face Trainer run as wandb sees it: WandbCallback rows plus a user callback.

Unmodified user code (no stepsync import). Usage: python hf_trainer.py OUTPUT_DIR
"""

import sys

import wandb

STEPS = 8

run = wandb.init(project="stepsync-activation", dir=sys.argv[1])
# WandbCallback.setup: every metric is charted against the trainer's own step key.
run.define_metric("train/global_step")
run.define_metric("*", step_metric="train/global_step", step_sync=True)
for global_step in range(1, STEPS + 1):
    # WandbCallback.on_log: training and evaluation rows, step-less.
    wandb.log({"train/loss": 1.0 / global_step, "train/global_step": global_step})
    wandb.log({"eval/loss": 2.0 / global_step, "train/global_step": global_step})
    # A user's TrainerCallback logging at the trainer's step.
    wandb.log({"custom/seen_step": global_step}, step=global_step)
run.finish()
