"""Scoring sampled tokens: the log-prob and entropy of a rollout's response tokens under any model.

Teachers, the reference and the student all score the student's sampled token ids, at temperature
1, in fp32, one chunk of positions at a time (``gopd_lightning.logprobs``). A model whose chat
template differs from the student's sees the prompt rendered its own way, with the response ids
appended unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutputWithPast

from gopd_lightning.logprobs import TokenScores, logprobs_from_hidden
from gopd_lightning.rollout import Rollout, SamplingConfig, encode_prompts, sampler_logits


@dataclass
class TokenScorer:
    """Scores a rollout's response tokens under any model that shares the student's vocabulary."""

    vocab_size: int
    """Size of the shared vocabulary: logits beyond it (embedding padding) are never used."""
    chunk_size: int = 1024
    """Response positions per chunk of fp32 logits."""
    template_kwargs: dict = field(default_factory=dict)
    """Extra arguments of ``apply_chat_template`` when a prompt is rendered another model's way."""

    def __call__(
        self,
        model: PreTrainedModel,
        rollout: Rollout,
        prompt_tokenizer: PreTrainedTokenizerBase | None = None,
        sampler: SamplingConfig | None = None,
    ) -> TokenScores:
        """Log-prob and entropy of the rollout's response tokens under ``model``.

        With ``prompt_tokenizer`` (a model whose chat template differs from the student's) the
        prompts are rendered that model's way and the response ids appended unchanged. With a
        ``sampler`` other than the model's own distribution, the sampler's log-probs come too.
        """
        if prompt_tokenizer is None:
            input_ids, attention_mask = rollout.input_ids, rollout.attention_mask
        else:
            input_ids, attention_mask = with_prompts_of(prompt_tokenizer, rollout, self.template_kwargs)
        return response_logprobs(
            model,
            input_ids,
            attention_mask,
            rollout.response_ids.shape[1],
            self.chunk_size,
            self.vocab_size,
            sampler,
        )


def response_logprobs(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_length: int,
    chunk_size: int = 1024,
    vocab_size: int | None = None,
    sampler: SamplingConfig | None = None,
) -> TokenScores:
    """Log-prob and entropy [rows, response_length] of the last ``response_length`` tokens.

    Runs the decoder once and applies the output head chunk by chunk at the response positions
    only (fp32, never the whole [rows, time, vocab]). Temperature 1: the model's own distribution.
    ``vocab_size`` keeps the first logits only: embedding matrices padded beyond the tokenizer
    differ between models, the shared vocabulary does not. With a ``sampler`` that is not the
    model's own distribution, the log-probs under that sampler come too (``sampler_logp``).

    The head runs in a forward hook of the decoder, inside the model's own forward call, so what
    wraps that call (FSDP2 gathering the embeddings and the head) sees one ordinary forward; the
    model's own logits are computed at one position only.
    """
    position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)
    start = input_ids.shape[1] - response_length - 1
    head = model.get_output_embeddings()
    if vocab_size is not None:
        full_head = head

        def head(h: Tensor) -> Tensor:
            return full_head(h)[..., :vocab_size]

    warp: Callable[[Tensor], Tensor] | None = None
    if sampler is not None and not sampler.samples_the_model:

        def warp(logits: Tensor) -> Tensor:
            return sampler_logits(logits, sampler)

    scores = []

    def score(decoder: nn.Module, inputs: tuple, output: BaseModelOutputWithPast) -> None:
        hidden = output.last_hidden_state[:, start:]
        scores.append(logprobs_from_hidden(hidden, head, input_ids[:, start + 1 :], chunk_size, warp))

    hook = model.get_decoder().register_forward_hook(score)
    try:
        model(
            input_ids=input_ids[:, :-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=position_ids[:, :-1],
            use_cache=False,
            logits_to_keep=1,
        )
    finally:
        hook.remove()
    return scores[0]


def with_prompts_of(
    tokenizer: PreTrainedTokenizerBase, rollout: Rollout, template_kwargs: dict | None = None
) -> tuple[Tensor, Tensor]:
    """The rollout's responses behind its prompts rendered by another model's chat template.

    A teacher scores the student's response token ids after the prompt as *it* was trained to
    see it; the response block (and so the response columns) is unchanged.
    """
    prompts = encode_prompts(tokenizer, rollout.rows, template_kwargs=template_kwargs)
    device = rollout.input_ids.device
    input_ids = torch.cat([prompts["input_ids"].to(device), rollout.response_ids], dim=1)
    attention_mask = torch.cat(
        [prompts["attention_mask"].to(device), rollout.response_mask.to(prompts["attention_mask"].dtype)], dim=1
    )
    return input_ids, attention_mask
