"""Rollouts: chat prompts -> sampled responses (scoring them is ``gopd_lightning.scoring``).

Layout of a rollout batch: each row is ``[left-padded prompt | right-padded response]``, so every
response starts at the same column ``prompt_length``. ``response_mask`` keeps the generated tokens
up to and including the first EOS (any of the model's EOS ids) and drops everything after it,
also when pad == eos.

Sampling is exactly the configured sampler: ``generate`` gets a generation config built from
scratch, so nothing of a model's ``generation_config.json`` (repetition penalty, top-k, min-p,
...) reaches a rollout. With temperature 1, top-p 1 and no top-k the tokens come from pi_theta
itself; any other sampler is reproduced by :func:`sampler_logits` so that its log-probs can
correct the estimator (truncated importance weights).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

Row = dict[str, object]


@dataclass
class SamplingConfig:
    """How responses are sampled (temperature 1, top-p 1, top-k 0: exactly the model's distribution)."""

    temperature: float = 1.0
    """Sampling temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off)."""
    max_new_tokens: int = 16384
    """Longest response, in tokens; longer ones are cut and counted as truncated."""
    samples_per_prompt: int = 1
    """Responses sampled for every prompt."""
    top_k: int = 0
    """Sample among the k most likely tokens only (0 = off)."""

    def __post_init__(self) -> None:
        checks = {
            "temperature": self.temperature >= 0,
            "top_p": 0 < self.top_p <= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "samples_per_prompt": self.samples_per_prompt >= 1,
            "top_k": self.top_k >= 0,
        }
        rules = {
            "temperature": ">= 0 (0 is greedy)",
            "top_p": "in (0, 1]",
            "max_new_tokens": ">= 1",
            "samples_per_prompt": ">= 1",
            "top_k": ">= 0 (0 is off)",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"sampling {name}={getattr(self, name)!r} is invalid: it must be {rules[name]}")

    @property
    def samples_the_model(self) -> bool:
        """True when responses are drawn from the model's own distribution (what the estimator assumes)."""
        return self.temperature == 1 and self.top_p == 1 and self.top_k == 0

    def describe(self) -> str:
        return f"temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k}"


def sampler_logits(logits: Tensor, sampling: SamplingConfig) -> Tensor:
    """The logits the sampler draws from: temperature, then top-k, then top-p, as ``generate`` applies them.

    Removed tokens get -inf; greedy (temperature 0) keeps the argmax only. ``logits`` are fp32 [..., vocab].
    """
    if sampling.temperature == 0:
        top = logits.argmax(dim=-1, keepdim=True)
        return torch.full_like(logits, float("-inf")).scatter(-1, top, 0.0)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = logits.topk(min(sampling.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        ascending, order = logits.sort(dim=-1)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - sampling.top_p
        drop[..., -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


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
    sampling: SamplingConfig | None = None
    """The sampler that drew the responses (None: given responses, not sampled)."""
    eos_token_ids: tuple[int, ...] = ()
    """The ids that end a response."""

    @property
    def response_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_length :]

    @property
    def response_mask(self) -> Tensor:
        return self.attention_mask[:, self.prompt_length :].bool()

    @property
    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(dim=-1)

    @property
    def ended(self) -> Tensor:
        """[rows] True where the response ended with an EOS (False: cut at ``max_new_tokens``)."""
        eos = torch.tensor(self.eos_token_ids, dtype=self.input_ids.dtype, device=self.input_ids.device)
        return (torch.isin(self.response_ids, eos) & self.response_mask).any(dim=-1)

    def select(self, index: Tensor | slice) -> Rollout:
        """The sub-batch of rows ``index`` (a slice or a 1-d index tensor)."""
        positions = range(len(self.rows))[index] if isinstance(index, slice) else index.tolist()
        return Rollout(
            self.input_ids[index],
            self.attention_mask[index],
            self.prompt_length,
            [self.rows[i] for i in positions],
            self.sampling,
            self.eos_token_ids,
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


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and each EOS of the model's generation config.

    Qwen3 ends a turn with ``<|im_end|>`` and a document with ``<|endoftext|>``: both stop and mask.
    """
    configured = getattr(_generating_model(model).generation_config, "eos_token_id", None)
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return sorted({tokenizer.eos_token_id, *configured})


def generation_config(
    sampling: SamplingConfig, eos_ids: Sequence[int], pad_token_id: int, suppress: Sequence[int]
) -> GenerationConfig:
    """A generation config that samples with ``sampling`` and nothing else (every other processor off)."""
    greedy = sampling.temperature == 0
    return GenerationConfig(
        do_sample=not greedy,
        temperature=1.0 if greedy else sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p,
        top_k=None if greedy else sampling.top_k,
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=list(eos_ids),
        pad_token_id=pad_token_id,
        suppress_tokens=list(suppress) or None,
        use_cache=True,
    )


@torch.no_grad()
def generate_rollout(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Row],
    sampling: SamplingConfig,
    max_prompt_length: int | None = None,
    template_kwargs: dict | None = None,
    synced_ranks: bool = False,
) -> Rollout:
    """Sample ``samples_per_prompt`` responses per row with HF ``generate`` (KV cache on).

    The generation config is built from scratch (:func:`generation_config`); EOS ids are every EOS
    of the model (:func:`eos_token_ids`) and PAD is the tokenizer's. ``synced_ranks`` keeps every
    rank of a process group stepping until all are done (a layer-wise sharded model gathers its
    weights in every step, on every rank).
    """
    prompts = encode_prompts(tokenizer, rows, max_prompt_length, template_kwargs)
    n = sampling.samples_per_prompt
    prompts = {key: value.repeat_interleave(n, dim=0).to(model.device) for key, value in prompts.items()}
    eos_ids = eos_token_ids(model, tokenizer)
    config = generation_config(sampling, eos_ids, tokenizer.pad_token_id, padded_token_ids(model, tokenizer))
    with eval_mode(model), own_generation_config(model):
        sequences = model.generate(**prompts, generation_config=config, synced_gpus=synced_ranks)
    prompt_length = prompts["input_ids"].shape[1]
    response_mask = response_mask_after_eos(sequences[:, prompt_length:], eos_ids)
    prompt_mask = prompts["attention_mask"]
    attention_mask = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1)
    repeated = [row for row in rows for _ in range(n)]
    return Rollout(sequences, attention_mask, prompt_length, repeated, sampling, tuple(eos_ids))


@contextmanager
def eval_mode(model: nn.Module, keep_checkpointed_layers: bool = False) -> Iterator[None]:
    """``model`` in eval mode for the block (dropout off), every submodule's mode restored after it.

    ``keep_checkpointed_layers`` leaves layers with activation checkpointing on in their mode:
    transformers checkpoints a layer only in train mode, and the layer itself holds no dropout.
    """
    modes = {module: module.training for module in model.modules()}
    for module in modes:
        if not (keep_checkpointed_layers and getattr(module, "gradient_checkpointing", False)):
            module.training = False
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


@contextmanager
def own_generation_config(model: PreTrainedModel) -> Iterator[None]:
    """Hide the model's ``generation_config`` for the block: ``generate`` fills unset fields from it."""
    target = _generating_model(model)
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


def _generating_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model behind a PEFT wrapper (the one whose ``generation_config`` counts)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
