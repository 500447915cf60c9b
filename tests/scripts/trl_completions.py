"""A TRL GRPO-style run: step-less metric rows, a step-less completions table, a reward callback.

Unmodified user code (no stepsync import). Usage: python trl_completions.py OUTPUT_DIR
"""

import sys

import wandb

STEPS = 6

run = wandb.init(project="stepsync-activation", dir=sys.argv[1])
for global_step in range(1, STEPS + 1):
    # Trainer.log -> WandbCallback.on_log, step-less.
    wandb.log({"train/reward": 0.1 * global_step, "train/global_step": global_step})
    # GRPOTrainer.log: the sampled completions as a table, step-less too.
    table = wandb.Table(columns=["step", "prompt", "completion"])
    table.add_data(str(global_step), "2+2=", f"{global_step}")
    wandb.log({"completions": table})
    # A reward-model callback that logs at the trainer's step.
    wandb.log({"reward_model/step": global_step}, step=global_step)
run.finish()
