"""``GOPDModule``: the LightningModule that trains a student with Generalized On-Policy Distillation.

One training step, as the data flows:

    rows (prompt, domain, ground_truth)
      -> chat template -> student ``generate``                      (rollout.generate_rollout)
      -> each row's domain teacher and the reference score the
         sampled tokens (no_grad, fp32, chunked)                    (rollout.response_logprobs)
      -> student log-probs with grad
      -> token_advantages(student, teacher, ref, lam)               (objective)
      -> policy_gradient_loss -> optimiser step(s)
      -> rollout statistics are logged (length, entropy, reverse KL, accuracy)

Features:
- Any number of teachers keyed by domain; every row is scored by its own domain's teacher.
- The reference is a frozen copy of the student's initial weights by default, or any model;
  it is never built when ``lam == 1`` (it cancels out of the objective).
- Frozen models are built in ``configure_model`` (so a sharding strategy can wrap each), kept in
  eval mode without gradients, and left out of the optimiser and of checkpoints; the config
  rebuilds them on resume.
- Manual optimisation: one rollout batch can be split into several optimiser updates (PPO clip
  then matters) and micro-batches (gradient accumulation) without changing the loss value.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gopd_lightning.metrics import BenchmarkScores
from gopd_lightning.models import (
    check_same_vocabulary,
    check_vocabulary_fits,
    freeze,
    load_causal_lm,
    load_tokenizer,
)
from gopd_lightning.objective import Aggregation, aggregate, policy_gradient_loss, token_advantages
from gopd_lightning.rewards import DOMAINS, score_batch
from gopd_lightning.rollout import Rollout, SamplingConfig, generate_rollout, response_logprobs

INITIAL = "initial"
FROZEN_PREFIXES = ("teachers.", "reference.")


def paper_adamw(params: Iterable[nn.Parameter]) -> Optimizer:
    """The published optimiser: AdamW, lr 1e-5, weight decay 0.01."""
    return AdamW(params, lr=1e-5, weight_decay=0.01)


@dataclass
class UpdateConfig:
    """How one rollout batch becomes optimiser updates."""

    updates_per_rollout: int = 1
    """Optimiser steps per rollout batch (the batch is split into this many mini-batches). The
    paper uses 1: fully on-policy, the PPO clip is inactive."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward pass (gradient accumulation); None = the whole mini-batch."""
    aggregation: Aggregation = "seq-mean-token-mean"
    """How token terms are averaged: the paper's per-sequence token mean, then sequence mean."""
    clip_eps: float | None = 0.2
    """PPO clip range; only has an effect when ``updates_per_rollout > 1``."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clipping of the student (None turns it off)."""


# the configs live in checkpoint hyperparameters, which Lightning loads with weights_only=True
torch.serialization.add_safe_globals([SamplingConfig, UpdateConfig])


class GOPDModule(LightningModule):
    """Distil teachers into a student with the G-OPD objective (see the module docstring)."""

    def __init__(
        self,
        student: str,
        teachers: dict[str, str],
        reference: str | None = INITIAL,
        lam: float = 1.0,
        sampling: SamplingConfig | None = None,
        eval_sampling: SamplingConfig | None = None,
        eval_samples: dict[str, int] | None = None,
        eval_pass_k: list[int] | None = None,
        update: UpdateConfig | None = None,
        max_prompt_length: int = 2048,
        logprob_chunk_size: int = 1024,
        student_dtype: str = "float32",
        frozen_dtype: str = "float32",
        optimizer: OptimizerCallable = paper_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        """
        Args:
            student: path, hub id or ``toy:<name>`` of the model to train.
            teachers: domain -> teacher model; each row is scored by its domain's teacher.
            reference: "initial" (a frozen copy of the student's initial weights), a model path
                (e.g. the teacher's pre-RL base, for reward correction), or None (only with lam 1).
            lam: reward scale lambda: 1 = OPD, > 1 = ExOPD (1.25 in the paper), < 1 interpolation.
            sampling: how training rollouts are sampled.
            eval_sampling: how validation and test responses are sampled.
            eval_samples: domain -> samples per problem in evaluation (the paper: 32 for math,
                4 for code); other domains use ``eval_sampling.samples_per_prompt``.
            eval_pass_k: k values of the unbiased pass@k to report (k <= samples per problem).
            update: how a rollout batch becomes optimiser updates.
            max_prompt_length: longest prompt in tokens; a longer one is an error.
            logprob_chunk_size: response positions per chunk of fp32 logits.
            student_dtype: weights of the student.
            frozen_dtype: weights of the teachers and the reference.
            optimizer: builds the optimiser from the student's parameters.
            lr_scheduler: optionally builds a learning-rate scheduler from the optimiser.
        """
        super().__init__()
        if not teachers:
            raise ValueError("teachers is empty: give at least one domain -> teacher model")
        if lam != 1.0 and reference is None:
            raise ValueError(
                f"lam={lam} needs a reference model (lam == 1 is the only case where it cancels); "
                f"set reference to {INITIAL!r} (the student's initial weights) or a model path"
            )
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.sampling = sampling or SamplingConfig()
        self.eval_sampling = eval_sampling or SamplingConfig()
        self.update = update or UpdateConfig()
        self.eval_samples = dict(eval_samples or {})
        self.scores = nn.ModuleDict({stage: BenchmarkScores(eval_pass_k or ()) for stage in ("val", "test")})
        self.eval_results: dict[str, dict[str, float]] = {}
        self.optimizer_factory: Callable[[Iterable[nn.Parameter]], Optimizer] = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.automatic_optimization = False
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.student: PreTrainedModel | None = None
        self.teachers: nn.ModuleDict | None = None
        self.reference: PreTrainedModel | None = None
        # teachers and the reference never enter checkpoints; the config rebuilds them
        self.register_state_dict_post_hook(_drop_frozen_keys)
        self.register_load_state_dict_post_hook(_ignore_missing_frozen_keys)

    @property
    def lam(self) -> float:
        return float(self.hparams.lam)

    @property
    def needs_reference(self) -> bool:
        return self.lam != 1.0

    # ---------------------------------------------------------------- building the models
    def configure_model(self) -> None:
        """Load the student, the teachers and (when lam != 1) the reference, once."""
        if self.student is not None:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.student)
        teacher_tokenizers = {domain: load_tokenizer(path) for domain, path in hp.teachers.items()}
        for domain, tokenizer in teacher_tokenizers.items():
            check_same_vocabulary(self.tokenizer, tokenizer, f"teacher {domain!r} ({hp.teachers[domain]})")
        if self.needs_reference and hp.reference != INITIAL:
            check_same_vocabulary(self.tokenizer, load_tokenizer(hp.reference), f"reference ({hp.reference})")

        self.student = load_causal_lm(hp.student, hp.student_dtype).train()
        check_vocabulary_fits(self.student, self.tokenizer, f"student ({hp.student})")
        teachers = {}
        for domain, path in hp.teachers.items():
            teachers[domain] = freeze(load_causal_lm(path, hp.frozen_dtype))
            check_vocabulary_fits(teachers[domain], self.tokenizer, f"teacher {domain!r} ({path})")
        self.teachers = nn.ModuleDict(teachers)
        if self.needs_reference:
            if hp.reference == INITIAL:
                reference = copy.deepcopy(self.student).to(getattr(torch, hp.frozen_dtype))
            else:
                reference = load_causal_lm(hp.reference, hp.frozen_dtype)
            check_vocabulary_fits(reference, self.tokenizer, f"reference ({hp.reference})")
            self.reference = freeze(reference)

    def setup(self, stage: str) -> None:
        """Fail early when the data holds a domain that has no teacher."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        domains = getattr(datamodule, "domains", None)
        if stage == "fit" and domains:
            self.check_domains(domains)

    def check_domains(self, domains: Iterable[str]) -> None:
        """Raise a ValueError naming every domain that has no teacher."""
        missing = sorted(set(domains) - set(self.hparams.teachers))
        if missing:
            raise ValueError(
                f"no teacher for domain(s) {missing}; teachers are given for "
                f"{sorted(self.hparams.teachers)} (add them under model.teachers)"
            )

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own return type
        optimizer = self.optimizer_factory(self.student.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    # ---------------------------------------------------------------- training
    def training_step(self, batch: list[dict], batch_idx: int) -> Tensor:
        self.check_domains(row["domain"] for row in batch)
        rollout = generate_rollout(self.student, self.tokenizer, batch, self.sampling, self.hparams.max_prompt_length)
        teacher_logp, ref_logp = self.score_frozen(rollout)
        loss, student_logp, entropy, advantages = self.optimise(rollout, teacher_logp, ref_logp)
        self.log_rollout("train", rollout, entropy, student_logp, teacher_logp, advantages)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def student_logprobs(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """Student log-prob (with grad when enabled) and entropy of the sampled response tokens."""
        return response_logprobs(
            self.student,
            rollout.input_ids,
            rollout.attention_mask,
            rollout.response_ids.shape[1],
            self.hparams.logprob_chunk_size,
        )

    @torch.no_grad()
    def score_frozen(self, rollout: Rollout) -> tuple[Tensor, Tensor | None]:
        """Teacher log-probs (each row by its own domain's teacher) and reference log-probs."""
        teacher_logp = torch.zeros(rollout.response_ids.shape, device=rollout.input_ids.device)
        domains = [row["domain"] for row in rollout.rows]
        for domain in sorted(set(domains)):
            index = torch.tensor([i for i, d in enumerate(domains) if d == domain], device=teacher_logp.device)
            teacher_logp[index] = self._frozen_logprobs(self.teachers[domain], rollout.select(index))
        ref_logp = self._frozen_logprobs(self.reference, rollout) if self.needs_reference else None
        return teacher_logp, ref_logp

    def _frozen_logprobs(self, model: PreTrainedModel, rollout: Rollout) -> Tensor:
        logp, _ = response_logprobs(
            model,
            rollout.input_ids,
            rollout.attention_mask,
            rollout.response_ids.shape[1],
            self.hparams.logprob_chunk_size,
        )
        return logp

    def optimise(
        self, rollout: Rollout, teacher_logp: Tensor, ref_logp: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Turn one rollout into optimiser updates; return (loss, student logp, entropy, advantages).

        With one update per rollout (the paper) the advantage of each micro-batch comes from the
        detached log-probs of the same forward pass. With several, the advantages and the PPO
        ratio's old log-probs are fixed by a no-grad pass first, and each mini-batch is one
        optimiser step. Each micro-batch loss is weighted by its share of the mini-batch's
        normaliser (sequences, or tokens for "token-mean"), so accumulation gives exactly the
        mini-batch's gradient.
        """
        rows = len(rollout.rows)
        updates = self.update.updates_per_rollout
        mini_size = -(-rows // updates)
        micro_size = self.update.micro_batch_size or mini_size
        student_logp = torch.zeros_like(teacher_logp)
        entropy = torch.zeros_like(teacher_logp)
        old_logp = None
        if updates > 1:
            with torch.no_grad():
                for start in range(0, rows, micro_size):
                    part = slice(start, start + micro_size)
                    student_logp[part], entropy[part] = self.student_logprobs(rollout.select(part))
            old_logp = student_logp
            advantages = token_advantages(student_logp, teacher_logp, ref_logp, self.lam)
        else:
            advantages = torch.zeros_like(teacher_logp)  # filled micro-batch by micro-batch below

        optimizer = self.optimizers()
        order = torch.randperm(rows) if updates > 1 else torch.arange(rows)
        losses = []
        for mini in order.split(mini_size):
            normaliser = self._normaliser(rollout.response_mask[mini])
            for micro in mini.split(micro_size):
                part = rollout.select(micro)
                logp, part_entropy = self.student_logprobs(part)
                if old_logp is None:
                    student_logp[micro], entropy[micro] = logp.detach(), part_entropy
                    micro_ref = None if ref_logp is None else ref_logp[micro]
                    advantages[micro] = token_advantages(logp, teacher_logp[micro], micro_ref, self.lam)
                loss = policy_gradient_loss(
                    logp,
                    advantages[micro],
                    part.response_mask,
                    old_logp=None if old_logp is None else old_logp[micro],
                    clip_eps=self.update.clip_eps,
                    aggregation=self.update.aggregation,
                )
                loss = loss * self._normaliser(part.response_mask) / normaliser
                self.manual_backward(loss)
                losses.append(loss.detach())
            if self.update.max_grad_norm is not None:
                self.clip_gradients(
                    optimizer, gradient_clip_val=self.update.max_grad_norm, gradient_clip_algorithm="norm"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return torch.stack(losses).sum() / updates, student_logp, entropy, advantages

    def _normaliser(self, mask: Tensor) -> Tensor:
        if self.update.aggregation == "token-mean":
            return mask.sum().clamp_min(1).float()
        return (mask.sum(dim=-1) > 0).sum().clamp_min(1).float()

    # ---------------------------------------------------------------- logging
    def log_rollout(
        self,
        stage: str,
        rollout: Rollout,
        entropy: Tensor,
        student_logp: Tensor,
        teacher_logp: Tensor,
        advantages: Tensor,
    ) -> None:
        """Per-step rollout statistics, overall and (with several domains) per domain."""
        mask = rollout.response_mask
        lengths = rollout.response_lengths.float()
        truncated = (~_ended(rollout, self.tokenizer.eos_token_id)).float()
        groups = _domain_groups(rollout.rows)
        for name, index in groups.items():
            prefix = f"{stage}/" if name == "" else f"{stage}/{name}/"
            m = mask[index]
            stats = {
                "advantage": aggregate(advantages[index], m, "token-mean"),
                "reverse_kl": aggregate(student_logp[index] - teacher_logp[index], m, "token-mean"),
                "entropy": aggregate(entropy[index], m, "token-mean"),
                "response_length": lengths[index].mean(),
                "response_length_max": lengths[index].max(),
                "truncated": truncated[index].mean(),
            }
            accuracy = self.accuracy(rollout.select(index))
            if accuracy is not None:
                stats["accuracy"] = accuracy.mean()
            for key, value in stats.items():
                show = name == "" and key in ("reverse_kl", "accuracy")
                self.log(prefix + key, value, prog_bar=show, batch_size=len(index))

    def accuracy(self, rollout: Rollout) -> Tensor | None:
        """Per-row correctness of the rows that carry a checkable answer (None if there are none)."""
        rows = [i for i, row in enumerate(rollout.rows) if _checkable(row)]
        if not rows:
            return None
        texts = self.tokenizer.batch_decode(rollout.response_ids[rows], skip_special_tokens=True)
        picked = [rollout.rows[i] for i in rows]
        scores = score_batch([r["domain"] for r in picked], texts, [str(r["ground_truth"]) for r in picked])
        return torch.tensor(scores, device=rollout.input_ids.device)

    # ---------------------------------------------------------------- evaluation
    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        self.evaluate("val", batch)

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        self.evaluate("test", batch)

    def evaluate(self, stage: str, batch: list[dict]) -> None:
        """Sample k responses per problem (k by domain) and add them to the stage's benchmark scores."""
        batch = [row for row in batch if _checkable(row)]
        for domain in sorted({row["domain"] for row in batch}):
            rows = [row for row in batch if row["domain"] == domain]
            k = self.eval_samples.get(domain, self.eval_sampling.samples_per_prompt)
            sampling = dataclasses.replace(self.eval_sampling, samples_per_prompt=k)
            rollout = generate_rollout(self.student, self.tokenizer, rows, sampling, self.hparams.max_prompt_length)
            correct = self.accuracy(rollout).view(len(rows), k)
            lengths = rollout.response_lengths.view(len(rows), k)
            self.scores[stage].update(
                [row.get("source") or domain for row in rows], [domain] * len(rows), correct, lengths
            )

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def _log_scores(self, stage: str) -> None:
        """Log the epoch's benchmark table (already reduced across ranks) and keep it for writers."""
        results = {f"{stage}/{key}": float(value) for key, value in self.scores[stage].compute().items()}
        self.scores[stage].reset()
        self.eval_results[stage] = results
        for key, value in results.items():
            self.log(key, value, prog_bar=key == f"{stage}/accuracy")


def _checkable(row: Mapping) -> bool:
    return bool(row.get("ground_truth")) and row["domain"] in DOMAINS


def _ended(rollout: Rollout, eos_token_id: int) -> Tensor:
    return (rollout.response_ids == eos_token_id).logical_and(rollout.response_mask).any(dim=-1)


def _domain_groups(rows: list[Mapping]) -> dict[str, Tensor]:
    """Row indices overall ("") and, when the batch has several domains, per domain."""
    groups = {"": torch.arange(len(rows))}
    domains = sorted({row["domain"] for row in rows})
    if len(domains) > 1:
        for domain in domains:
            groups[domain] = torch.tensor([i for i, row in enumerate(rows) if row["domain"] == domain])
    return groups


def _drop_frozen_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k[len(prefix) :].startswith(FROZEN_PREFIXES)]:
        del state_dict[key]


def _ignore_missing_frozen_keys(module: nn.Module, incompatible_keys) -> None:  # noqa: ANN001
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not k.startswith(FROZEN_PREFIXES)]
