"""Scoring sampled tokens: the log-prob and entropy of a rollout's response tokens under any model.

Teachers, the reference and the student all score the student's sampled token ids, at temperature
1, in fp32, one chunk of positions at a time (``gopd_lightning.logprobs``). A model whose chat
template differs from the student's sees the prompt rendered its own way, with the response ids
appended unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutputWithPast

from gopd_lightning.logprobs import Head, TokenScores, logprobs_from_hidden
from gopd_lightning.rollout import Rollout, SamplingConfig, encode_prompts, sampler_logits

Result = TypeVar("Result")


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
        input_ids, attention_mask = self._inputs(rollout, prompt_tokenizer)
        return response_logprobs(
            model,
            input_ids,
            attention_mask,
            rollout.response_ids.shape[1],
            self.chunk_size,
            self.vocab_size,
            sampler,
        )

    def hidden_states(
        self, model: PreTrainedModel, rollout: Rollout, prompt_tokenizer: PreTrainedTokenizerBase | None = None
    ) -> Tensor:
        """Final hidden states [rows, response, dim] of ``model`` at the rollout's response positions."""
        input_ids, attention_mask = self._inputs(rollout, prompt_tokenizer)
        return response_hidden_states(model, input_ids, attention_mask, rollout.response_ids.shape[1])

    def _inputs(self, rollout: Rollout, prompt_tokenizer: PreTrainedTokenizerBase | None) -> tuple[Tensor, Tensor]:
        if prompt_tokenizer is None:
            return rollout.input_ids, rollout.attention_mask
        return with_prompts_of(prompt_tokenizer, rollout, self.template_kwargs)


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
    head = output_head(model, vocab_size)
    warp: Callable[[Tensor], Tensor] | None = None
    if sampler is not None and not sampler.samples_the_model:

        def warp(logits: Tensor) -> Tensor:
            return sampler_logits(logits, sampler)

    def score(hidden: Tensor, targets: Tensor) -> TokenScores:
        return logprobs_from_hidden(hidden, head, targets, chunk_size, warp)

    return _at_response_positions(model, input_ids, attention_mask, response_length, score)


def response_hidden_states(
    model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, response_length: int
) -> Tensor:
    """The decoder's final hidden states [rows, response_length, dim] at the positions that predict the response.

    For the full-vocabulary loss, which applies every model's head itself, a chunk at a time.
    """
    return _at_response_positions(model, input_ids, attention_mask, response_length, lambda hidden, _: hidden)


def output_head(model: PreTrainedModel, vocab_size: int | None = None) -> Head:
    """``model``'s output head (with its gradient), its logits cut to the first ``vocab_size``."""
    head = model.get_output_embeddings()
    if vocab_size is None:
        return head
    return lambda hidden: head(hidden)[..., :vocab_size]


def frozen_head(model: PreTrainedModel, vocab_size: int, device: torch.device) -> Head:
    """A frozen model's output head as a constant on ``device``, usable after the model's forward.

    An offloaded model goes back to CPU memory; an FSDP2-sharded one frees its gathered weights
    (here they are gathered whole: a collective, so every rank asks for every model, in one order).
    """
    layer = model.get_output_embeddings()
    weight, bias = (
        None if p is None else _whole(p.detach())[:vocab_size].to(device) for p in (layer.weight, layer.bias)
    )
    return lambda hidden: F.linear(hidden, weight, bias)


def _whole(tensor: Tensor) -> Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _at_response_positions(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_length: int,
    use: Callable[[Tensor, Tensor], Result],
) -> Result:
    """``use(hidden, targets)`` on the final hidden states at the response positions, inside one forward call."""
    position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)
    start = input_ids.shape[1] - response_length - 1
    results = []

    def on_decoder_output(decoder: nn.Module, inputs: tuple, output: BaseModelOutputWithPast) -> None:
        results.append(use(output.last_hidden_state[:, start:], input_ids[:, start + 1 :]))

    hook = model.get_decoder().register_forward_hook(on_decoder_output)
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
    return results[0]


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
