"""Toy teachers made the way the paper's were: GRPO with verifier rewards from the toy base.

The toy world builds a recipe with ``method="grpo"`` by running this module in a fresh interpreter
(``python -m gopd_lightning.toy_teachers``, its arguments pickled on stdin): the project's own
:class:`~gopd_lightning.GRPOModule` under a Lightning ``Trainer``, apart from the process that asked
for the model, so the asking run's random state, loggers and threads are untouched.
"""

from __future__ import annotations

import logging
import pickle
import sys
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch

from gopd_lightning.data import DataSource, PromptDataModule
from gopd_lightning.grpo import GRPOModule
from gopd_lightning.policy import UpdateConfig
from gopd_lightning.rollout import SamplingConfig
from gopd_lightning.toy.quality import MAX_PROMPT_TOKENS
from gopd_lightning.toy.world import ToyModelRecipe

log = logging.getLogger(__name__)


def train_with_grpo(name: str, recipe: ToyModelRecipe, seed: int, parent: Path, path: Path) -> None:
    """GRPO of the toy model at ``parent`` on ``recipe.families``, saved with its tokenizer at ``path``.

    ``recipe.steps`` rollout batches of ``recipe.batch_size`` prompts, ``recipe.group_size`` samples each,
    one update per batch at ``recipe.lr`` (the paper's teachers: 128 prompts x 8 samples, one update).
    """
    pl.seed_everything(seed, verbose=False)
    module = GRPOModule(
        student=str(parent),
        sampling=SamplingConfig(max_new_tokens=recipe.max_new_tokens, samples_per_prompt=recipe.group_size),
        update=UpdateConfig(),
        max_prompt_length=MAX_PROMPT_TOKENS,
        optimizer=partial(torch.optim.AdamW, lr=recipe.lr, weight_decay=0.01),
    )
    train = [
        DataSource(f"toy:{family}", split="train", limit=recipe.steps * recipe.batch_size, seed=seed)
        for family in dict.fromkeys(recipe.families)
    ]
    data = PromptDataModule(train=train, batch_size=recipe.batch_size, seed=seed)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=recipe.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
    )
    log.info("toy model %r: GRPO on %s for %d steps", name, "+".join(recipe.families), recipe.steps)
    trainer.fit(module, datamodule=data)
    student = module.student.eval()
    student.save_pretrained(path)
    module.tokenizer.save_pretrained(path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # as the toy world's SFT builds: the same result anywhere, immune to busy cores
    train_with_grpo(*pickle.load(sys.stdin.buffer))
