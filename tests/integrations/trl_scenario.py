"""TRL's GRPOTrainer on a tiny GPT-2 with an in-memory word-level tokenizer (no download):
step-less profiling rows and completions tables, plus a user callback logging
``step=state.global_step``. Plain user code: no stepsync import.

Usage: python trl_scenario.py OUTPUT_DIR (frameworks imported in ``train``: cheap to collect)
"""

from __future__ import annotations

import sys
from typing import Any

STEPS = 4
USER_KEY = "user/global_step_seen"


def train(output_dir: str) -> None:
    """Run GRPO for ``STEPS`` steps; the Trainer's WandbCallback logs to ``wandb.run``."""
    import torch
    import wandb
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class UserCallback(TrainerCallback):
        """What users write: log a value at the trainer's step at the end of every step."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            wandb.log({USER_KEY: state.global_step}, step=state.global_step)

    def length_reward(completions: list[str], **kwargs: Any) -> list[float]:
        return [float(len(completion)) for completion in completions]

    torch.manual_seed(0)
    words = [f"w{i}" for i in range(40)]
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    config = GPT2Config(
        vocab_size=len(vocab), n_positions=32, n_embd=16, n_layer=1, n_head=2,
        pad_token_id=0, bos_token_id=2, eos_token_id=2,
    )  # fmt: skip
    args = GRPOConfig(
        output_dir=f"{output_dir}/trainer",
        max_steps=STEPS,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        logging_steps=1,
        log_completions=True,
        report_to="wandb",
        use_cpu=True,
        save_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    prompts = [" ".join(words[i : i + 3]) for i in range(16)]
    wandb.init(project="stepsync-integrations", dir=output_dir)
    trainer = GRPOTrainer(
        model=GPT2LMHeadModel(config),
        reward_funcs=length_reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        callbacks=[UserCallback()],
    )
    trainer.train()
    wandb.finish()


if __name__ == "__main__":
    train(sys.argv[1])
