"""How good a toy model is: held-out accuracy at temperature 1, as the toy configs sample it."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gopd_lightning.rewards import score_batch
from gopd_lightning.rollout import SamplingConfig, generate_rollout
from gopd_lightning.toy.tasks import toy_rows

MAX_PROMPT_TOKENS, MAX_RESPONSE_TOKENS = 64, 40
"""What the toy configs allow."""
HELD_OUT = {"math": 256, "code": 128}
"""Validation problems a toy model is measured on, per domain."""


def held_out_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, domain: str, seed: int = 9, sampling_seed: int = 0
) -> float:
    """Fraction of ``HELD_OUT[domain]`` validation problems (data seed ``seed``) answered right, one sample each."""
    rows = toy_rows(domain, HELD_OUT[domain], seed=seed, split="val")
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(sampling_seed)
        rollout = generate_rollout(model, tokenizer, rows, SamplingConfig(max_new_tokens=MAX_RESPONSE_TOKENS))
    texts = tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
    scores = score_batch([domain] * len(rows), texts, [str(row["ground_truth"]) for row in rows])
    return sum(scores) / len(scores)
