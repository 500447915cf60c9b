"""Hugging Face Trainer + a callback that logs ``step=state.global_step``: nothing is dropped.

Run: python examples/hf_trainer.py            (with stepsync: one line, ``stepsync.patch()``)
     python examples/hf_trainer.py --native   (plain wandb, to see what it drops)
Offline, CPU, no download: a tiny GPT-2 built from a config trains on random token ids.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

import torch
import wandb
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as hf_logging

import stepsync
from stepsync.history import read_history

STEPS = 20


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, rows: int) -> None:
        self.ids = torch.randint(0, 64, (rows, 16), generator=torch.Generator().manual_seed(rows))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


class StepCounterCallback(TrainerCallback):
    """A typical user callback: one value per step, logged at the Trainer's step."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        wandb.log({"user/steps_seen": state.global_step}, step=state.global_step)


def main(native: bool) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    if not native:
        stepsync.patch()  # the one line; or STEPSYNC_ENABLED=1, or callbacks=[StepSyncCallback()]
    out = tempfile.mkdtemp(prefix="stepsync-hf-")
    run = wandb.init(project="stepsync-hf-trainer", dir=out)
    args = TrainingArguments(
        output_dir=f"{out}/trainer",
        max_steps=STEPS,
        per_device_train_batch_size=4,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=5,
        save_strategy="no",
        report_to="wandb",
        use_cpu=True,
        disable_tqdm=True,
        log_level="error",
    )
    hf_logging.set_verbosity_error()
    config = GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    trainer = Trainer(
        model=GPT2LMHeadModel(config),
        args=args,
        train_dataset=RandomTokens(STEPS * 4),
        eval_dataset=RandomTokens(8),
        callbacks=[StepCounterCallback()],
    )
    trainer.remove_callback(PrinterCallback)  # keep the output to the summary below
    trainer.train()
    run_dir = run.settings.sync_dir
    run.finish()
    rows = read_history(run_dir)
    kept = [row["user/steps_seen"] for row in rows if "user/steps_seen" in row]
    evals = [
        row.get("stepsync/step", row["train/global_step"]) for row in rows if "eval/loss" in row
    ]
    print(f"{'native wandb' if native else 'stepsync'}: kept {len(kept)}/{STEPS} callback values")
    print(f"  eval rows at steps {evals}; {len(rows)} rows in the run file")


if __name__ == "__main__":
    main(native="--native" in sys.argv[1:])
