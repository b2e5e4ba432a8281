"""Rollouts: chat prompts -> sampled responses, and scoring of sampled tokens by any model.

Layout of a rollout batch: each row is ``[left-padded prompt | right-padded response]``, so every
response starts at the same column ``prompt_length``. ``response_mask`` keeps the generated tokens
up to and including the first EOS and drops everything after it, also when pad == eos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutputWithPast

from gopd_lightning.logprobs import logprobs_from_hidden

Row = dict[str, object]


@dataclass
class SamplingConfig:
    """How responses are sampled."""

    temperature: float = 1.0
    """Sampling temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = 16384
    """Longest response, in tokens; longer ones are cut and counted as truncated."""
    samples_per_prompt: int = 1
    """Responses sampled for every prompt."""


@dataclass
class Rollout:
    """Sampled responses of a batch of prompts (one row per sample)."""

    input_ids: Tensor
    """[rows, prompt_length + response_length] token ids."""
    attention_mask: Tensor
    """[rows, prompt_length + response_length]: 1 for prompt and kept response tokens."""
    prompt_length: int
    """Column where every response starts."""
    rows: list[Row]
    """The data row of each sample (repeated ``samples_per_prompt`` times)."""

    @property
    def response_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_length :]

    @property
    def response_mask(self) -> Tensor:
        return self.attention_mask[:, self.prompt_length :].bool()

    @property
    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(dim=-1)

    def select(self, index: Tensor | slice) -> Rollout:
        """The sub-batch of rows ``index`` (a slice or a 1-d index tensor)."""
        positions = range(len(self.rows))[index] if isinstance(index, slice) else index.tolist()
        return Rollout(
            self.input_ids[index], self.attention_mask[index], self.prompt_length, [self.rows[i] for i in positions]
        )


def render_prompts(
    tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], template_kwargs: dict | None = None
) -> list[str]:
    """Each row's chat messages rendered by the tokenizer's chat template, ready for generation.

    ``template_kwargs`` go to the template (e.g. ``{"enable_thinking": False}`` for Qwen3).
    """
    kwargs = template_kwargs or {}
    return [
        tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True, **kwargs)
        for row in rows
    ]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Row],
    max_prompt_length: int | None = None,
    template_kwargs: dict | None = None,
) -> dict[str, Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` of the rows' chat prompts.

    Raises a ValueError naming the row when a prompt is longer than ``max_prompt_length``.
    """
    texts = render_prompts(tokenizer, rows, template_kwargs)
    encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    if max_prompt_length is not None:
        lengths = encoded["attention_mask"].sum(dim=-1)
        too_long = (lengths > max_prompt_length).nonzero().flatten().tolist()
        if too_long:
            row = rows[too_long[0]]
            raise ValueError(
                f"prompt of row {row.get('id', too_long[0])!r} has {int(lengths[too_long[0]])} tokens, more "
                f"than max_prompt_length={max_prompt_length}; filter or shorten it"
            )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def padded_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Output ids beyond the tokenizer (embedding padding): never sampled, never scored."""
    return list(range(len(tokenizer), model.get_output_embeddings().weight.shape[0]))


def response_mask_after_eos(responses: Tensor, eos_token_ids: Sequence[int]) -> Tensor:
    """True for generated tokens up to and including the first EOS of each row."""
    is_eos = torch.isin(responses, torch.tensor(list(eos_token_ids), device=responses.device))
    eos_before = torch.cumsum(is_eos.int(), dim=-1) - is_eos.int()
    return eos_before == 0


@torch.no_grad()
def generate_rollout(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Row],
    sampling: SamplingConfig,
    max_prompt_length: int | None = None,
    template_kwargs: dict | None = None,
) -> Rollout:
    """Sample ``samples_per_prompt`` responses per row with HF ``generate`` (KV cache on).

    EOS and PAD come from the tokenizer, set explicitly, never from a generation config that
    transformers may have filled from other special tokens.
    """
    prompts = encode_prompts(tokenizer, rows, max_prompt_length, template_kwargs)
    n = sampling.samples_per_prompt
    prompts = {key: value.repeat_interleave(n, dim=0).to(model.device) for key, value in prompts.items()}
    greedy = sampling.temperature == 0
    was_training = model.training
    model.eval()
    try:
        sequences = model.generate(
            **prompts,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            suppress_tokens=padded_token_ids(model, tokenizer) or None,
            use_cache=True,
        )
    finally:
        model.train(was_training)
    prompt_length = prompts["input_ids"].shape[1]
    response_mask = response_mask_after_eos(sequences[:, prompt_length:], [tokenizer.eos_token_id])
    prompt_mask = prompts["attention_mask"]
    attention_mask = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1)
    repeated = [row for row in rows for _ in range(n)]
    return Rollout(sequences, attention_mask, prompt_length, repeated)


def response_logprobs(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_length: int,
    chunk_size: int = 1024,
    vocab_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Log-prob and entropy [rows, response_length] of the last ``response_length`` tokens.

    Runs the decoder once and applies the output head chunk by chunk at the response positions
    only (fp32, never the whole [rows, time, vocab]). Temperature 1: the model's own distribution.
    ``vocab_size`` keeps the first logits only: embedding matrices padded beyond the tokenizer
    differ between models, the shared vocabulary does not.

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

    scores = []

    def score(decoder: nn.Module, inputs: tuple, output: BaseModelOutputWithPast) -> None:
        hidden = output.last_hidden_state[:, start:]
        scores.append(logprobs_from_hidden(hidden, head, input_ids[:, start + 1 :], chunk_size))

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
