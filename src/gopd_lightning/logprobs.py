"""Token log-probs and entropy without a whole fp32 [batch, time, vocab] tensor.

A 150k vocabulary over a long response makes fp32 logits tens of GB. These functions work one
time-chunk at a time: each chunk's logits are upcast to fp32, reduced to the log-prob of the given
token and the entropy, and dropped. With gradients on, each chunk is recomputed in the backward
pass (activation checkpointing), so only [batch, chunk, vocab] logits live at any moment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Warp = Callable[[Tensor], Tensor]


class TokenScores(NamedTuple):
    """Per-token scores [batch, time] of given tokens, all fp32."""

    logp: Tensor
    """Log-prob under the model (with grad when the inputs have it)."""
    entropy: Tensor
    """Entropy of the model's distribution (detached: logged, not trained)."""
    sampler_logp: Tensor | None = None
    """Log-prob under the sampler's warped distribution (detached), when a warp was given."""


def _chunk_stats(logits: Tensor, targets: Tensor, warp: Warp | None) -> tuple[Tensor, Tensor, Tensor]:
    logits = logits.float()
    log_norm = torch.logsumexp(logits, dim=-1)
    target_logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_norm
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1)
        entropy = log_norm - (probs * logits).sum(dim=-1)
        if warp is None:
            sampler_logp = torch.zeros_like(entropy)
        else:
            warped = torch.log_softmax(warp(logits.detach()), dim=-1)
            sampler_logp = warped.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return target_logp, entropy, sampler_logp


def logprobs_from_logits(
    logits: Tensor, targets: Tensor, chunk_size: int = 1024, warp: Warp | None = None
) -> TokenScores:
    """Log-prob of ``targets`` [batch, time] under ``logits`` [batch, time, vocab], and entropy.

    With ``warp`` (fp32 logits -> the sampler's logits), the log-prob under the sampler too.
    """
    return logprobs_from_hidden(logits, lambda chunk: chunk, targets, chunk_size, warp)


def logprobs_from_hidden(
    hidden: Tensor, head: Callable[[Tensor], Tensor], targets: Tensor, chunk_size: int = 1024, warp: Warp | None = None
) -> TokenScores:
    """Like :func:`logprobs_from_logits`, but apply the output ``head`` to ``hidden`` chunk by chunk.

    ``hidden`` [batch, time, dim] are the final hidden states at the positions that predict
    ``targets``; ``head`` maps them to logits. No logits larger than one chunk ever exist.
    """
    if hidden.shape[:2] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree")

    def stats(h: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _chunk_stats(head(h), t, warp)

    parts = []
    for start in range(0, targets.shape[1], chunk_size):
        h, t = hidden[:, start : start + chunk_size], targets[:, start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(stats, h, t, use_reentrant=False))
        else:
            parts.append(stats(h, t))
    logp, entropy, sampler_logp = (torch.cat(values, dim=1) for values in zip(*parts, strict=True))
    return TokenScores(logp, entropy.detach(), None if warp is None else sampler_logp.detach())
