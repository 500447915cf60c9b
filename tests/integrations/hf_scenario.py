"""Issue #5's Hugging Face scenario: a tiny GPT-2 trained 20 steps, eval every 5, report_to wandb,
and a user callback logging ``step=state.global_step``. Plain user code: no stepsync import.

Usage: python hf_scenario.py OUTPUT_DIR. The in-process test imports ``train``; frameworks are
imported inside it so that collecting the tests stays cheap.
"""

from __future__ import annotations

import sys
from typing import Any

STEPS = 20
EVAL_EVERY = 5
USER_KEY = "user/global_step_seen"


def train(output_dir: str, extra_callbacks: list[Any] | None = None) -> None:
    """Run the scenario; the Trainer's WandbCallback starts an offline run under ``output_dir``."""
    import torch
    import wandb
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class RandomTokens(torch.utils.data.Dataset):
        """Random token ids: a language-model dataset with no tokenizer and no download."""

        def __init__(self, rows: int) -> None:
            generator = torch.Generator().manual_seed(rows)
            self.ids = torch.randint(0, 64, (rows, 16), generator=generator)

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, index: int) -> dict[str, Any]:
            return {"input_ids": self.ids[index], "labels": self.ids[index]}

    class UserCallback(TrainerCallback):
        """What users write: log a value at the trainer's step at the end of every step."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            wandb.log({USER_KEY: state.global_step}, step=state.global_step)

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    args = TrainingArguments(
        output_dir=f"{output_dir}/trainer",
        max_steps=STEPS,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=EVAL_EVERY,
        save_strategy="no",
        report_to="wandb",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    wandb.init(project="stepsync-integrations", dir=output_dir)
    trainer = Trainer(
        model=GPT2LMHeadModel(config),
        args=args,
        train_dataset=RandomTokens(STEPS * 4),
        eval_dataset=RandomTokens(8),
        callbacks=[UserCallback(), *(extra_callbacks or [])],
    )
    trainer.train()
    wandb.finish()


if __name__ == "__main__":
    train(sys.argv[1])
