"""The G-OPD objective as pure tensor functions (no Lightning, no Hugging Face).

The student maximises, for responses it samples itself,

    J = E[ lam * log(pi_teacher / pi_ref) - KL(pi_student || pi_ref) ]

which gives every sampled token y_t its own dense advantage (no discounting, no baseline):

    A_t = lam * (log pi_teacher_t - log pi_ref_t) - (log pi_student_t - log pi_ref_t)

lam == 1 is standard on-policy distillation (the reference cancels), lam > 1 is reward
extrapolation (ExOPD), and a teacher's pre-RL base as the reference is reward correction.
The loss is the policy gradient of J with the advantage held constant. Its Rao-Blackwellised form,
:func:`full_vocab_loss`, takes the expectation over each visited position's next token exactly:
``KL(pi_student || q)`` with ``q`` proportional to ``pi_teacher^lam * pi_ref^(1 - lam)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

Aggregation = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"]
AGGREGATIONS: tuple[str, ...] = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum")


def token_advantages(
    student_logp: Tensor, teacher_logp: Tensor, ref_logp: Tensor | None = None, lam: float = 1.0
) -> Tensor:
    """Per-token G-OPD advantage of the sampled tokens; positive pushes a token up.

    All inputs are log-probabilities of the same sampled tokens, shape [batch, time]. The result
    is detached: advantages are constants of the policy gradient. ``ref_logp`` may be None only
    when ``lam == 1``, where the reference cancels out.
    """
    student_logp, teacher_logp = student_logp.detach(), teacher_logp.detach()
    if lam == 1.0:
        return teacher_logp - student_logp
    if ref_logp is None:
        raise ValueError(
            f"lam={lam} needs the reference log-probs (ref_logp); only lam == 1 lets the reference cancel out"
        )
    ref_logp = ref_logp.detach()
    return lam * (teacher_logp - ref_logp) - (student_logp - ref_logp)


class Advantages(Protocol):
    """The advantages of a rollout's sampled tokens, given the student's own (detached) log-probs of them."""

    def of(self, student_logp: Tensor, rows: Tensor) -> Tensor:
        """Advantages [len(rows), time] of the rollout rows ``rows``, whose student log-probs are ``student_logp``."""
        ...


@dataclass
class DistillationAdvantages:
    """G-OPD's dense token advantages (:func:`token_advantages`) from fixed teacher and reference log-probs."""

    teacher_logp: Tensor
    ref_logp: Tensor | None
    lam: float

    def of(self, student_logp: Tensor, rows: Tensor) -> Tensor:
        rows = rows.to(self.teacher_logp.device)
        ref_logp = None if self.ref_logp is None else self.ref_logp[rows]
        return token_advantages(student_logp, self.teacher_logp[rows], ref_logp, self.lam)


@dataclass
class SequenceAdvantages:
    """One advantage per response, on every one of its tokens (GRPO's; SFT's cross-entropy is all ones)."""

    values: Tensor
    """[rows] one value per response."""

    def of(self, student_logp: Tensor, rows: Tensor) -> Tensor:
        return self.values[rows.to(self.values.device)].unsqueeze(1).expand_as(student_logp).to(student_logp.dtype)


def aggregate(values: Tensor, mask: Tensor, aggregation: Aggregation = "seq-mean-token-mean") -> Tensor:
    """Reduce per-token ``values`` [batch, time] over the tokens where ``mask`` is true.

    - "seq-mean-token-mean": mean over each sequence's tokens, then over sequences (the paper's).
    - "token-mean": mean over every unmasked token of the batch.
    - "seq-mean-token-sum": sum over each sequence's tokens, then mean over sequences.
    Sequences without any unmasked token are left out of the sequence mean.
    """
    mask = mask.to(values.dtype)
    masked = values * mask
    if aggregation == "token-mean":
        return masked.sum() / mask.sum().clamp_min(1.0)
    tokens_per_seq = mask.sum(dim=-1)
    per_seq = masked.sum(dim=-1)
    if aggregation == "seq-mean-token-mean":
        per_seq = per_seq / tokens_per_seq.clamp_min(1.0)
    elif aggregation != "seq-mean-token-sum":
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
    has_tokens = (tokens_per_seq > 0).to(values.dtype)
    return (per_seq * has_tokens).sum() / has_tokens.sum().clamp_min(1.0)


def policy_gradient_loss(
    logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    old_logp: Tensor | None = None,
    sampler_logp: Tensor | None = None,
    clip_eps: float | None = None,
    is_cap: float = 5.0,
    aggregation: Aggregation = "seq-mean-token-mean",
) -> Tensor:
    """Loss to minimise: ``-aggregate(weight * ratio * advantages)``.

    ``ratio = exp(logp - old_logp)`` with ``old_logp`` defaulting to ``logp.detach()`` (one update
    per rollout: ratio == 1, gradient == advantage * grad logp). With ``clip_eps`` the PPO clipped
    surrogate ``min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`` is used, for several updates
    per rollout. When another engine sampled the tokens, ``sampler_logp`` adds the truncated
    importance weight ``min(exp(old_logp - sampler_logp), is_cap)``.
    """
    if logp.shape != advantages.shape or logp.shape != mask.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)}, advantages {tuple(advantages.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape"
        )
    advantages = advantages.detach()
    old_logp = logp.detach() if old_logp is None else old_logp.detach()
    ratio = torch.exp(logp - old_logp)
    surrogate = ratio * advantages
    if clip_eps is not None:
        clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
        surrogate = torch.minimum(surrogate, clipped)
    if sampler_logp is not None:
        weight = torch.exp(old_logp - sampler_logp.detach()).clamp(max=is_cap)
        surrogate = weight * surrogate
    return -aggregate(surrogate, mask, aggregation)


def target_logprobs(teacher_logp: Tensor, ref_logp: Tensor | None, lam: float) -> Tensor:
    """``log q`` over the whole vocabulary, ``q = softmax(lam * log pi_teacher + (1 - lam) * log pi_ref)``.

    Per visited context the G-OPD objective is ``-KL(pi_student || q) + const``: ``q`` is the
    distribution the student is pulled towards (the teacher itself when ``lam == 1``, the reward
    extrapolated past it when ``lam > 1``). Inputs are full-vocabulary log-probs ``[..., V]``;
    ``ref_logp`` may be None only when ``lam == 1``. The result is normalised (detached).
    """
    teacher_logp = teacher_logp.detach()
    if lam == 1.0:
        return teacher_logp.log_softmax(dim=-1)
    if ref_logp is None:
        raise ValueError(
            f"lam={lam} needs the reference log-probs (ref_logp); only lam == 1 lets the reference cancel out"
        )
    return (lam * teacher_logp + (1 - lam) * ref_logp.detach()).log_softmax(dim=-1)


def full_vocab_loss(
    student_logp: Tensor, target_logp: Tensor, mask: Tensor, aggregation: Aggregation = "seq-mean-token-mean"
) -> Tensor:
    """The exact full-vocabulary G-OPD loss: ``KL(pi_student || q)`` at every kept position, aggregated.

    ``student_logp`` [batch, time, V] (with grad) and ``target_logp`` (``log q``, from
    :func:`target_logprobs`) are log-probs over the vocabulary at each response position. The
    gradient equals, position by position, the expectation over the student's next token of the
    sampled-token estimator's gradient (:func:`policy_gradient_loss` with :func:`token_advantages`):
    the same expected update without the variance of drawing the token (Rao-Blackwellised). The
    positions are aggregated like the sampled loss (``mask`` [batch, time]).
    """
    if student_logp.shape != target_logp.shape or student_logp.shape[:-1] != mask.shape:
        raise ValueError(
            f"student_logp {tuple(student_logp.shape)} and target_logp {tuple(target_logp.shape)} must be "
            f"[batch, time, vocab] over mask {tuple(mask.shape)}"
        )
    return aggregate(position_kl(student_logp, target_logp), mask, aggregation)


def position_kl(student_logp: Tensor, target_logp: Tensor) -> Tensor:
    """``KL(pi_student || q)`` [...] of full-vocabulary log-probs [..., V] (``q`` held constant)."""
    probs = student_logp.exp()
    return (probs * (student_logp - target_logp.detach())).masked_fill(probs == 0, 0.0).sum(dim=-1)


def group_normalized_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GRPO's sequence advantages: each reward minus its group's mean, over the group's std.

    ``rewards`` [groups * group_size] holds the rewards of ``group_size`` samples of each prompt,
    consecutively. A group whose samples all scored the same gets zero advantage (nothing to learn).
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.view(-1, group_size).double()
    centred = groups - groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True, unbiased=False) if group_size > 1 else torch.ones_like(centred)
    return (centred / (std + eps)).view(-1).to(rewards.dtype)
