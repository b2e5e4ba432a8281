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

from gopd_lightning.objective import position_kl, target_logprobs

Warp = Callable[[Tensor], Tensor]
Head = Callable[[Tensor], Tensor]
"""Final hidden states [..., dim] -> logits [..., V] (an output head, sliced to the shared vocabulary)."""


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


def full_vocab_kl_from_hidden(
    student: tuple[Tensor, Head],
    teacher: tuple[Tensor, Head],
    reference: tuple[Tensor, Head] | None,
    lam: float,
    chunk_size: int = 1024,
) -> Tensor:
    """Per-position ``KL(pi_student || q)`` [batch, time] from final hidden states, one chunk of positions at a time.

    Each of ``student``, ``teacher`` and ``reference`` is (hidden states [batch, time, dim], head);
    ``q`` is :func:`~gopd_lightning.objective.target_logprobs` of the teacher and the reference
    (None only for ``lam == 1``). Every model's fp32 logits exist for one chunk at a time, never
    [batch, time, V] whole; with gradients on, the student's chunk is recomputed in the backward pass.
    """
    (student_hidden, student_head), (teacher_hidden, teacher_head) = student, teacher
    if student_hidden.shape[:2] != teacher_hidden.shape[:2] or (
        reference is not None and reference[0].shape[:2] != student_hidden.shape[:2]
    ):
        raise ValueError("the student's, teacher's and reference's hidden states must cover the same positions")

    def chunk_kl(s: Tensor, t: Tensor, r: Tensor | None) -> Tensor:
        with torch.no_grad():
            teacher_logp = _log_softmax(teacher_head(t))
            ref_logp = None if r is None else _log_softmax(reference[1](r))
            target = target_logprobs(teacher_logp, ref_logp, lam)
        return position_kl(_log_softmax(student_head(s)), target)

    parts = []
    for start in range(0, student_hidden.shape[1], chunk_size):
        window = slice(start, start + chunk_size)
        s, t = student_hidden[:, window], teacher_hidden[:, window]
        r = None if reference is None else reference[0][:, window]
        if torch.is_grad_enabled() and s.requires_grad:
            parts.append(checkpoint(chunk_kl, s, t, r, use_reentrant=False))
        else:
            parts.append(chunk_kl(s, t, r))
    return torch.cat(parts, dim=1)


def _log_softmax(logits: Tensor) -> Tensor:
    """Log-softmax in fp32 at least (bf16/fp16 logits are upcast, fp64 stays)."""
    return (logits if logits.dtype == torch.float64 else logits.float()).log_softmax(dim=-1)
