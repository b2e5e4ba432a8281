"""``PolicyModule``: what every trainer of a sampling student shares.

The student and its tokenizer (built in ``configure_model``), rollouts, the update loop that turns
a rollout's advantages into optimiser steps (mini-batches and micro-batches, PPO clip), and the
benchmark evaluation (k samples per problem, avg@k and pass@k, per benchmark and domain).
:class:`~gopd_lightning.module.GOPDModule` (distillation) and the baselines build on it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gopd_lightning.checkpointing import AtomicCheckpointIO, NonFiniteError
from gopd_lightning.logprobs import TokenScores
from gopd_lightning.metrics import BenchmarkScores
from gopd_lightning.models import check_vocabulary_fits, load_causal_lm, load_tokenizer
from gopd_lightning.objective import AGGREGATIONS, Aggregation, policy_gradient_loss
from gopd_lightning.rewards import DOMAINS, score_batch
from gopd_lightning.rollout import (
    Rollout,
    SamplingConfig,
    eval_mode,
    generate_rollout,
    response_logprobs,
    with_prompts_of,
)
from gopd_lightning.sharding import ShardingConfig, parallelize, unsharded_generation
from gopd_lightning.step_stats import domain_groups, step_statistics

AdvantageFn = Callable[[Tensor, Tensor], Tensor]
log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        if self.updates_per_rollout < 1:
            raise ValueError(f"update.updates_per_rollout={self.updates_per_rollout!r} is invalid: it must be >= 1")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"update.micro_batch_size={self.micro_batch_size!r} is invalid: it must be >= 1 or null")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"update.aggregation={self.aggregation!r} is invalid: choose one of {AGGREGATIONS}")
        if self.clip_eps is not None and self.clip_eps <= 0:
            raise ValueError(f"update.clip_eps={self.clip_eps!r} is invalid: it must be > 0 or null")


# the configs live in checkpoint hyperparameters, which Lightning loads with weights_only=True
torch.serialization.add_safe_globals([SamplingConfig, UpdateConfig])


class PolicyModule(LightningModule):
    """A trainable student that samples its own responses; subclasses define ``training_step``."""

    ratio_to_rollout = True
    """With several updates per rollout, the loss is a PPO ratio to the rollout policy (clipped);
    a subclass whose loss is not a policy gradient of its own samples (SFT) turns this off."""

    def __init__(
        self,
        student: str,
        sampling: SamplingConfig | None = None,
        eval_sampling: SamplingConfig | None = None,
        eval_samples: dict[str, int] | None = None,
        eval_pass_k: list[int] | None = None,
        update: UpdateConfig | None = None,
        max_prompt_length: int = 2048,
        logprob_chunk_size: int = 1024,
        student_dtype: str = "float32",
        optimizer: OptimizerCallable = paper_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        lora: dict | None = None,
        chat_template_kwargs: dict | None = None,
        sharding: ShardingConfig | None = None,
    ) -> None:
        """
        Args:
            student: path, hub id or ``toy:<name>`` of the model to train.
            sampling: how training rollouts are sampled.
            eval_sampling: how validation and test responses are sampled.
            eval_samples: domain -> samples per problem in evaluation (the paper: 32 for math,
                4 for code); other domains use ``eval_sampling.samples_per_prompt``.
            eval_pass_k: k values of the unbiased pass@k to report (k <= samples per problem).
            update: how a rollout batch becomes optimiser updates.
            max_prompt_length: longest training prompt in tokens; a longer one is an error (evaluation
                prompts are not limited).
            logprob_chunk_size: response positions per chunk of fp32 logits.
            student_dtype: weights of the student.
            optimizer: builds the optimiser from the student's parameters.
            lr_scheduler: optionally builds a learning-rate scheduler from the optimiser.
            lora: train a LoRA adapter instead of every weight: keyword arguments of
                ``peft.LoraConfig`` (e.g. ``{r: 16, lora_alpha: 32, target_modules: all-linear}``).
            chat_template_kwargs: extra arguments of ``apply_chat_template`` for every prompt
                (e.g. ``{enable_thinking: false}`` for Qwen3's non-thinking template).
            sharding: activation checkpointing, and under FSDP2 the student's precision and how it
                is gathered for rollouts (see ``gopd_lightning.sharding``).
        """
        super().__init__()
        # collects the arguments of every subclass constructor in the chain too (Lightning walks the frames)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.sharding = sharding or ShardingConfig()
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.sampling = sampling or SamplingConfig()
        self.eval_sampling = eval_sampling or SamplingConfig()
        if self.ratio_to_rollout and not self.sampling.samples_the_model:
            log.warning(
                "training rollouts sample with %s, not the student's own distribution: every token's gradient is "
                "weighted by min(pi_theta / pi_sampler, 5) (truncated importance sampling)%s",
                self.sampling.describe(),
                "; greedy decoding puts all mass on one token, so the estimate stays biased (debugging only)"
                if self.sampling.temperature == 0
                else "",
            )
        if max_prompt_length < 1 or logprob_chunk_size < 1:
            raise ValueError(
                f"max_prompt_length={max_prompt_length} and logprob_chunk_size={logprob_chunk_size} must be >= 1"
            )
        self.update = update or UpdateConfig()
        self.eval_samples = dict(eval_samples or {})
        self.scores = nn.ModuleDict({stage: BenchmarkScores(eval_pass_k or ()) for stage in ("val", "test")})
        self.eval_results: dict[str, dict[str, float]] = {}
        self.optimizer_factory: Callable[[Iterable[nn.Parameter]], Optimizer] = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.automatic_optimization = False
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.student: PreTrainedModel | None = None

    def configure_model(self) -> None:
        """Load the tokenizer, the student and the frozen models, once (Lightning may call this again).

        Subclasses name their frozen models in two hooks: ``check_frozen_tokenizers`` (before any
        weights load, so a vocabulary mismatch fails fast) and ``load_frozen_models``. Then
        activation checkpointing and, under a device mesh, FSDP2 apply to every model.
        """
        if self.student is not None:
            return
        self.tokenizer = load_tokenizer(self.hparams.student)
        self.check_frozen_tokenizers()
        student = load_causal_lm(self.hparams.student, self.hparams.student_dtype)
        check_vocabulary_fits(student, self.tokenizer, f"student ({self.hparams.student})")
        if self.hparams.get("lora"):
            from peft import LoraConfig, get_peft_model

            student = get_peft_model(student, LoraConfig(task_type="CAUSAL_LM", **self.hparams.lora))
        self.student = student.train()
        parallelize(self.student, self.load_frozen_models(), self.device_mesh, self.sharding)

    def setup(self, stage: str) -> None:
        """Checkpoints of single files are written atomically (see ``gopd_lightning.checkpointing``)."""
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()

    def stop_unless_finite(self, values: Tensor, mask: Tensor | None, what: str) -> None:
        """Raise :class:`NonFiniteError` on every rank when ``values`` (where ``mask``) is NaN or inf on any rank.

        Checked before the optimiser step, so neither the student nor a checkpoint takes the bad step.
        """
        kept = values if mask is None else values[mask]
        bad = not bool(torch.isfinite(kept).all())
        if self._trainer is not None:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            step = self.trainer.global_step if self._trainer is not None else "?"
            raise NonFiniteError(
                f"{what} is not finite (NaN or inf) at step {step}; the run stops before the optimiser step, "
                "and the last checkpoint is left as it was"
            )

    def check_frozen_tokenizers(self) -> None:
        """Check the frozen models' tokenizers against the student's (``self.tokenizer``); none here."""

    def load_frozen_models(self) -> list[nn.Module]:
        """Build the frozen models (the student is loaded) and return them for sharding; none here."""
        return []

    @property
    def sharded(self) -> bool:
        """Whether the models are FSDP2-sharded: every forward is then a collective that all ranks must join."""
        return self.device_mesh is not None

    def domains_on_every_rank(self, local: Iterable[str]) -> list[str]:
        """The sorted union of ``local`` domains over all ranks (the same list on every rank)."""
        mine = sorted(set(local))
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return mine
        every = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(every, mine)
        return sorted(set().union(*every))

    def log_step_stats(
        self,
        stage: str,
        rollout: Rollout,
        token_values: Mapping[str, Tensor],
        row_values: Mapping[str, Tensor],
        prog_bar: Iterable[str] = (),
    ) -> None:
        """Log a step's rollout statistics, exact over all ranks, overall and (several domains) per domain.

        Always logs ``response_length``, ``response_length_max`` and ``truncated`` besides the
        given token statistics (means over response tokens) and row statistics (NaN = no value).
        """
        domains = [row["domain"] for row in rollout.rows]
        lengths = rollout.response_lengths.double()
        rows = {
            **row_values,
            "response_length": lengths,
            "truncated": (~rollout.ended).double(),
        }
        stats = step_statistics(
            domain_groups(domains, self.domains_on_every_rank(domains)),
            rollout.response_mask,
            token_values,
            rows,
            {"response_length_max": lengths},
            self.all_gather if self._trainer is not None else lambda tensor: tensor,
        )
        shown = set(prog_bar)
        for key, value in stats.items():
            self.log(f"{stage}/{key}", value, prog_bar=key in shown, batch_size=len(rollout.rows))

    @property
    def vocab_size(self) -> int:
        """Size of the shared vocabulary: logits beyond it (embedding padding) are never used."""
        return len(self.tokenizer)

    def rollout(self, rows: list[dict], sampling: SamplingConfig, training: bool = True) -> Rollout:
        """Sample responses to ``rows`` from the student (gathered whole for the call under FSDP2).

        Training prompts are held to ``max_prompt_length``; evaluation prompts are not (a benchmark is scored whole).
        """
        limit = self.hparams.max_prompt_length if training else None
        with unsharded_generation(self.student, self.sharding) as layerwise:
            return generate_rollout(
                self.student, self.tokenizer, rows, sampling, limit, self.chat_template_kwargs, synced_ranks=layerwise
            )

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own return type
        optimizer = self.optimizer_factory([p for p in self.student.parameters() if p.requires_grad])
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    def student_logprobs(self, rollout: Rollout) -> TokenScores:
        """Student log-prob (with grad when enabled), entropy and sampler log-prob of the response tokens.

        Scored with dropout off, as the student sampled them (activation checkpointing stays on).
        """
        with eval_mode(self.student, keep_checkpointed_layers=True):
            return self.logprobs_of(self.student, rollout, sampler=rollout.sampling)

    def logprobs_of(
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
            input_ids, attention_mask = with_prompts_of(prompt_tokenizer, rollout, self.chat_template_kwargs)
        return response_logprobs(
            model,
            input_ids,
            attention_mask,
            rollout.response_ids.shape[1],
            self.hparams.logprob_chunk_size,
            self.vocab_size,
            sampler,
        )

    def optimise(self, rollout: Rollout, advantage_fn: AdvantageFn) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Turn one rollout into optimiser updates; return (loss, student logp, entropy, advantages).

        ``advantage_fn(student_logp, rows)`` gives the advantages of ``rows`` of the rollout from
        their detached student log-probs. With one update per rollout (the paper) each
        micro-batch's advantages come from the log-probs of the same forward pass. With several,
        the rows are split into ``updates_per_rollout`` mini-batches of near-equal size (one
        optimiser step each), and the advantages and the PPO ratio's old log-probs are fixed by a
        no-grad pass first (unless ``ratio_to_rollout`` is off: SFT's cross-entropy has no ratio).
        Each micro-batch loss is weighted by its share of the mini-batch's normaliser (sequences,
        or tokens for "token-mean"), so accumulation gives exactly the mini-batch's gradient.
        When another sampler than the student's own distribution drew the tokens, each token's
        term carries the truncated importance weight ``min(pi_theta / pi_sampler, 5)``.
        """
        rows = len(rollout.rows)
        updates = self.update.updates_per_rollout
        if updates > rows:
            raise ValueError(f"update.updates_per_rollout={updates} is more than the {rows} rows of a rollout batch")
        micro_size = self.update.micro_batch_size or rows
        shape = rollout.response_ids.shape
        student_logp = torch.zeros(shape, device=rollout.input_ids.device)
        entropy = torch.zeros_like(student_logp)
        advantages = torch.zeros_like(student_logp)
        fixed = updates > 1 and self.ratio_to_rollout
        old_logp = sampler_logp = None
        if fixed:  # the rollout policy's log-probs, advantages and sampler weights, before any update
            old_logp, sampler_logp = torch.zeros_like(student_logp), torch.zeros_like(student_logp)
            with torch.no_grad():
                for start in range(0, rows, micro_size):
                    part = slice(start, start + micro_size)
                    scores = self.student_logprobs(rollout.select(part))
                    old_logp[part], entropy[part] = scores.logp, scores.entropy
                    if scores.sampler_logp is not None:
                        sampler_logp[part] = scores.sampler_logp
            student_logp.copy_(old_logp)
            advantages = advantage_fn(old_logp, torch.arange(rows))
            if not rollout.sampling or rollout.sampling.samples_the_model:
                sampler_logp = None

        optimizer = self.optimizers()
        minis = torch.randperm(rows).tensor_split(updates) if updates > 1 else [torch.arange(rows)]
        losses = []
        for mini in minis:
            normaliser = self._normaliser(rollout.response_mask[mini])
            for micro in mini.split(micro_size):
                part = rollout.select(micro)
                scores = self.student_logprobs(part)
                if not fixed:
                    student_logp[micro], entropy[micro] = scores.logp.detach(), scores.entropy
                    advantages[micro] = advantage_fn(scores.logp.detach(), micro)
                loss = policy_gradient_loss(
                    scores.logp,
                    advantages[micro],
                    part.response_mask,
                    old_logp=old_logp[micro] if fixed else None,
                    sampler_logp=sampler_logp[micro] if sampler_logp is not None else scores.sampler_logp,
                    clip_eps=self.update.clip_eps if fixed else None,
                    aggregation=self.update.aggregation,
                )
                loss = loss * self._normaliser(part.response_mask) / normaliser
                self.stop_unless_finite(loss, None, "the loss (the student's log-probs or the advantages)")
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
        return torch.stack(losses).sum() / len(minis), student_logp, entropy, advantages

    def _normaliser(self, mask: Tensor) -> Tensor:
        if self.update.aggregation == "token-mean":
            return mask.sum().clamp_min(1).float()
        return (mask.sum(dim=-1) > 0).sum().clamp_min(1).float()

    def accuracy(self, rollout: Rollout) -> Tensor:
        """Per-row correctness (1 or 0) of the rows that carry a checkable answer; NaN for the others."""
        scores = torch.full((len(rollout.rows),), float("nan"), device=rollout.input_ids.device)
        rows = [i for i, row in enumerate(rollout.rows) if _checkable(row)]
        if rows:
            texts = self.tokenizer.batch_decode(rollout.response_ids[rows], skip_special_tokens=True)
            picked = [rollout.rows[i] for i in rows]
            checked = score_batch([r["domain"] for r in picked], texts, [str(r["ground_truth"]) for r in picked])
            scores[rows] = torch.tensor(checked, device=scores.device)
        return scores

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        self.evaluate("val", batch)

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        self.evaluate("test", batch)

    def evaluate(self, stage: str, batch: list[dict]) -> None:
        """Sample k responses per problem (k by domain) and add them to the stage's benchmark scores.

        Padding rows (the evaluation sampler evens the ranks out with them) are not scored. Under
        FSDP2 every rank samples every domain that any rank holds, in one order (a rank without
        that domain samples a placeholder it throws away), so the ranks' collectives pair up.
        """
        scored = [row for row in batch if _checkable(row)]
        present = sorted({row["domain"] for row in scored})
        for domain in self.domains_on_every_rank(present) if self.sharded else present:
            rows = [row for row in scored if row["domain"] == domain]
            if not rows:
                self.rollout(batch[:1], dataclasses.replace(self.eval_sampling, samples_per_prompt=1), training=False)
                continue
            k = self.eval_samples.get(domain, self.eval_sampling.samples_per_prompt)
            sampling = dataclasses.replace(self.eval_sampling, samples_per_prompt=k)
            rollout = self.rollout(rows, sampling, training=False)
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


def mean_of_known(scores: Tensor) -> Tensor | None:
    """Mean of the scores that are not NaN (rows with a checkable answer); None when there are none."""
    known = scores[~scores.isnan()]
    return known.mean() if known.numel() else None


def _checkable(row: Mapping) -> bool:
    return bool(row.get("ground_truth")) and row["domain"] in DOMAINS and not row.get("padding")
