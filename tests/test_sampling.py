"""Rollouts sample exactly what the estimator assumes, and say so when they do not.

Each test runs ``generate_rollout`` itself on a tiny model and compares what it sampled with
distributions computed by hand from the model's logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from gopd_lightning.models import load_causal_lm, load_tokenizer
from gopd_lightning.rollout import SamplingConfig, encode_prompts, generate_rollout, sampler_logits
from gopd_lightning.toy.tasks import toy_rows
from helpers import save_tiny_model

SAMPLES = 3000


@pytest.fixture(scope="module")
def padded_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny model with embedding padding past its tokenizer and a generation config full of processors."""
    path = tmp_path_factory.mktemp("sampling") / "model"
    save_tiny_model(path, seed=4, vocab_size=len(load_tokenizer_plain()) + 6)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)  # a peaked, non-uniform first-token distribution
    model.generation_config = GenerationConfig(
        top_k=2, top_p=0.5, temperature=0.3, repetition_penalty=5.0, no_repeat_ngram_size=1, min_p=0.2, do_sample=True
    )
    model.save_pretrained(path)
    return str(path)


def load_tokenizer_plain():
    from gopd_lightning.toy.tokenizer import build_tokenizer

    return build_tokenizer()


def first_token_logits(path: str, rows: list[dict]) -> tuple[torch.Tensor, int]:
    """fp32 next-token logits after the first row's prompt, cut to the tokenizer's vocabulary."""
    tokenizer, model = load_tokenizer(path), load_causal_lm(path)
    prompts = encode_prompts(tokenizer, rows[:1])
    with torch.no_grad():
        logits = model(**prompts).logits[0, -1, : len(tokenizer)].float()
    return logits, len(tokenizer)


def empirical_first_tokens(path: str, rows: list[dict], sampling: SamplingConfig, vocab: int) -> torch.Tensor:
    tokenizer, model = load_tokenizer(path), load_causal_lm(path)
    torch.manual_seed(0)
    rollout = generate_rollout(model, tokenizer, rows[:1], sampling)
    return torch.bincount(rollout.response_ids[:, 0], minlength=vocab).double() / sampling.samples_per_prompt


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(max_new_tokens=1),  # exactly pi_theta: nothing of the model's generation config applies
        SamplingConfig(max_new_tokens=1, temperature=0.7, top_p=0.8),
        SamplingConfig(max_new_tokens=1, temperature=1.3, top_k=5),
    ],
    ids=["model", "temperature-top_p", "temperature-top_k"],
)
def test_sampled_tokens_follow_the_configured_sampler_only(padded_model: str, sampling: SamplingConfig) -> None:
    rows = toy_rows("math", 1)
    sampling = SamplingConfig(**{**sampling.__dict__, "samples_per_prompt": SAMPLES})
    logits, vocab = first_token_logits(padded_model, rows)
    expected = torch.softmax(sampler_logits(logits, sampling), dim=-1).double()
    seen = empirical_first_tokens(padded_model, rows, sampling, vocab + 6)
    assert seen[vocab:].sum() == 0  # embedding padding is never sampled
    total_variation = 0.5 * (seen[:vocab] - expected).abs().sum()
    assert total_variation < 0.05, total_variation


def test_sampler_logits_match_transformers_warpers() -> None:
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    sampling = SamplingConfig(temperature=0.7, top_k=9, top_p=0.85)
    expected = logits.clone()
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(9), TopPLogitsWarper(0.85)):
        expected = warper(None, expected)
    assert torch.equal(sampler_logits(logits, sampling).isinf(), expected.isinf())
    kept = ~expected.isinf()
    torch.testing.assert_close(sampler_logits(logits, sampling)[kept], expected[kept])


def test_every_eos_of_the_model_stops_and_masks(tiny_models: dict[str, str], tmp_path: Path) -> None:
    tokenizer, model = load_tokenizer(tiny_models["student"]), load_causal_lm(tiny_models["student"])
    rows = toy_rows("math", 8)
    sampled = SamplingConfig(max_new_tokens=8)
    torch.manual_seed(0)
    responses = generate_rollout(model, tokenizer, rows, sampled).response_ids.tolist()
    # a token some row says after its start and not before: now a second end of turn
    eos = tokenizer.eos_token_id
    row, at = next(
        (r, i) for r, ids in enumerate(responses) for i in range(1, len(ids)) if ids[i] not in [*ids[:i], eos]
    )
    model.generation_config.eos_token_id = [eos, responses[row][at]]
    torch.manual_seed(0)  # the same draws: the same tokens up to the new end of turn
    again = generate_rollout(model, tokenizer, rows, sampled)
    assert again.response_lengths[row] == at + 1 and bool(again.ended[row])
    assert again.response_ids[row, : at + 1].tolist() == responses[row][: at + 1]


def test_invalid_sampling_options_name_the_option() -> None:
    for option, value in [
        ("temperature", -0.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("max_new_tokens", 0),
        ("samples_per_prompt", 0),
        ("top_k", -1),
    ]:
        with pytest.raises(ValueError, match=f"sampling {option}="):
            SamplingConfig(**{option: value})
