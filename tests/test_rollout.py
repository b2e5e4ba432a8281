"""Rollouts: masks after EOS, prompt limits, and scoring that matches the sampling distribution."""

from __future__ import annotations

import pytest
import torch

from gopd_lightning.models import load_causal_lm, load_tokenizer
from gopd_lightning.rollout import (
    SamplingConfig,
    encode_prompts,
    generate_rollout,
    response_mask_after_eos,
)
from gopd_lightning.scoring import response_logprobs
from gopd_lightning.toy.tasks import toy_rows


def test_mask_keeps_first_eos_and_drops_padding_even_when_pad_is_eos() -> None:
    eos = 2
    responses = torch.tensor([[5, 6, eos, eos, eos], [5, eos, 7, eos, 8], [5, 6, 7, 8, 9]])
    mask = response_mask_after_eos(responses, [eos])
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, False, False, False],
        [True, True, True, True, True],
    ]


def test_prompt_longer_than_the_limit_names_the_row() -> None:
    tokenizer = load_tokenizer_from_toy()
    rows = toy_rows("math", 3)
    with pytest.raises(ValueError, match="toy-math-train-0-0.*max_prompt_length=5"):
        encode_prompts(tokenizer, rows, max_prompt_length=5)


def load_tokenizer_from_toy():
    from gopd_lightning.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.padding_side = "left"
    return tokenizer


def test_scored_logprobs_equal_the_sampling_distribution(tiny_models: dict[str, str]) -> None:
    """Left padding, positions and the response slice line up with what ``generate`` sampled from."""
    tokenizer = load_tokenizer(tiny_models["student"])
    model = load_causal_lm(tiny_models["student"])
    rows = toy_rows("math", 4) + [
        {
            "id": "long",
            "domain": "math",
            "prompt": [{"role": "user", "content": "What is 1+2? Think about it carefully."}],
            "ground_truth": "3",
        }
    ]
    torch.manual_seed(0)
    prompts = encode_prompts(tokenizer, rows)
    out = model.generate(
        **prompts,
        do_sample=True,
        max_new_tokens=6,
        output_logits=True,
        return_dict_in_generate=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        top_k=None,
    )
    sampled_logp = (
        torch.stack([torch.log_softmax(step.float(), -1) for step in out.logits], dim=1)
        .gather(-1, out.sequences[:, prompts["input_ids"].shape[1] :].unsqueeze(-1))
        .squeeze(-1)
    )
    response = out.sequences[:, prompts["input_ids"].shape[1] :]
    mask = response_mask_after_eos(response, [tokenizer.eos_token_id])
    attention = torch.cat([prompts["attention_mask"], mask.long()], dim=1)
    logp, entropy, _ = response_logprobs(model, out.sequences, attention, response.shape[1], chunk_size=4)
    assert torch.allclose(logp[mask], sampled_logp[mask], atol=1e-4)
    assert torch.all(entropy[mask] > 0)


def test_generate_rollout_shapes_and_samples_per_prompt(tiny_models: dict[str, str]) -> None:
    tokenizer = load_tokenizer(tiny_models["student"])
    model = load_causal_lm(tiny_models["student"]).train()
    rows = toy_rows("math", 3)
    rollout = generate_rollout(model, tokenizer, rows, SamplingConfig(max_new_tokens=5, samples_per_prompt=2))
    assert rollout.input_ids.shape[0] == 6 and rollout.response_ids.shape[1] <= 5
    assert [row["id"] for row in rollout.rows] == [rows[0]["id"]] * 2 + [rows[1]["id"]] * 2 + [rows[2]["id"]] * 2
    assert torch.all(rollout.response_lengths >= 1)
    assert model.training  # generation switched to eval and back
    greedy = generate_rollout(
        model, tokenizer, rows, SamplingConfig(temperature=0, max_new_tokens=5, samples_per_prompt=2)
    )
    assert torch.equal(greedy.input_ids[0::2], greedy.input_ids[1::2])  # greedy: both samples equal
