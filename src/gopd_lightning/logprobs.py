"""Token log-probs and entropy without a whole fp32 [batch, time, vocab] tensor.

A 150k vocabulary over a long response makes fp32 logits tens of GB. These functions work one
time-chunk at a time: each chunk's logits are upcast to fp32, reduced to the log-prob of the given
token and the entropy, and dropped. With gradients on, each chunk is recomputed in the backward
pass (activation checkpointing), so only [batch, chunk, vocab] logits live at any moment.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _chunk_stats(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    logits = logits.float()
    log_norm = torch.logsumexp(logits, dim=-1)
    target_logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_norm
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1)
        entropy = log_norm - (probs * logits).sum(dim=-1)
    return target_logp, entropy


def logprobs_from_logits(logits: Tensor, targets: Tensor, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Log-prob of ``targets`` [batch, time] under ``logits`` [batch, time, vocab], and entropy.

    Both results are fp32 [batch, time]; the entropy is detached (it is logged, not trained).
    """
    return logprobs_from_hidden(logits, lambda chunk: chunk, targets, chunk_size)


def logprobs_from_hidden(
    hidden: Tensor, head: Callable[[Tensor], Tensor], targets: Tensor, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Like :func:`logprobs_from_logits`, but apply the output ``head`` to ``hidden`` chunk by chunk.

    ``hidden`` [batch, time, dim] are the final hidden states at the positions that predict
    ``targets``; ``head`` maps them to logits. No logits larger than one chunk ever exist.
    """
    if hidden.shape[:2] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree")

    def stats(h: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return _chunk_stats(head(h), t)

    logps, entropies = [], []
    for start in range(0, targets.shape[1], chunk_size):
        h, t = hidden[:, start : start + chunk_size], targets[:, start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            logp, ent = checkpoint(stats, h, t, use_reentrant=False)
        else:
            logp, ent = stats(h, t)
        logps.append(logp)
        entropies.append(ent)
    return torch.cat(logps, dim=1), torch.cat(entropies, dim=1).detach()
