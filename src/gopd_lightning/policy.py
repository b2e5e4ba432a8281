"""``PolicyModule``: what every trainer of a sampling student shares.

The student and its tokenizer (built in ``configure_model``), rollouts, the update loop that turns
a rollout's advantages into optimiser steps (mini-batches and micro-batches, PPO clip), and the
benchmark evaluation (k samples per problem, avg@k and pass@k, per benchmark and domain).
:class:`~gopd_lightning.module.GOPDModule` (distillation) and the baselines build on it.
"""

from __future__ import annotations

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
from gopd_lightning.models import check_vocabulary_fits, load_causal_lm, load_tokenizer
from gopd_lightning.objective import Aggregation, policy_gradient_loss
from gopd_lightning.rewards import DOMAINS, score_batch
from gopd_lightning.rollout import Rollout, SamplingConfig, generate_rollout, response_logprobs, with_prompts_of
from gopd_lightning.sharding import ShardingConfig, parallelize, unsharded_generation

AdvantageFn = Callable[[Tensor, Tensor], Tensor]


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


class PolicyModule(LightningModule):
    """A trainable student that samples its own responses; subclasses define ``training_step``."""

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
            max_prompt_length: longest prompt in tokens; a longer one is an error.
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

    def check_frozen_tokenizers(self) -> None:
        """Check the frozen models' tokenizers against the student's (``self.tokenizer``); none here."""

    def load_frozen_models(self) -> list[nn.Module]:
        """Build the frozen models (the student is loaded) and return them for sharding; none here."""
        return []

    @property
    def vocab_size(self) -> int:
        """Size of the shared vocabulary: logits beyond it (embedding padding) are never used."""
        return len(self.tokenizer)

    def rollout(self, rows: list[dict], sampling: SamplingConfig) -> Rollout:
        """Sample responses to ``rows`` from the student (gathered whole for the call under FSDP2)."""
        with unsharded_generation(self.student, self.sharding):
            return generate_rollout(
                self.student, self.tokenizer, rows, sampling, self.hparams.max_prompt_length, self.chat_template_kwargs
            )

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own return type
        optimizer = self.optimizer_factory([p for p in self.student.parameters() if p.requires_grad])
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    def student_logprobs(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """Student log-prob (with grad when enabled) and entropy of the sampled response tokens."""
        return self.logprobs_of(self.student, rollout)

    def logprobs_of(
        self, model: PreTrainedModel, rollout: Rollout, prompt_tokenizer: PreTrainedTokenizerBase | None = None
    ) -> tuple[Tensor, Tensor]:
        """Log-prob and entropy of the rollout's response tokens under ``model``.

        With ``prompt_tokenizer`` (a model whose chat template differs from the student's) the
        prompts are rendered that model's way and the response ids appended unchanged.
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
        )

    def optimise(self, rollout: Rollout, advantage_fn: AdvantageFn) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Turn one rollout into optimiser updates; return (loss, student logp, entropy, advantages).

        ``advantage_fn(student_logp, rows)`` gives the advantages of ``rows`` of the rollout from
        their detached student log-probs. With one update per rollout (the paper) each
        micro-batch's advantages come from the log-probs of the same forward pass. With several,
        the advantages and the PPO ratio's old log-probs are fixed by a no-grad pass first, and
        each mini-batch is one optimiser step. Each micro-batch loss is weighted by its share of the mini-batch's
        normaliser (sequences, or tokens for "token-mean"), so accumulation gives exactly the
        mini-batch's gradient.
        """
        rows = len(rollout.rows)
        updates = self.update.updates_per_rollout
        mini_size = -(-rows // updates)
        micro_size = self.update.micro_batch_size or mini_size
        shape = rollout.response_ids.shape
        student_logp = torch.zeros(shape, device=rollout.input_ids.device)
        entropy = torch.zeros_like(student_logp)
        old_logp = None
        if updates > 1:
            with torch.no_grad():
                for start in range(0, rows, micro_size):
                    part = slice(start, start + micro_size)
                    student_logp[part], entropy[part] = self.student_logprobs(rollout.select(part))
            old_logp = student_logp
            advantages = advantage_fn(student_logp, torch.arange(rows))
        else:
            advantages = torch.zeros_like(student_logp)  # filled micro-batch by micro-batch below

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
                    advantages[micro] = advantage_fn(logp.detach(), micro)
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
        """Sample k responses per problem (k by domain) and add them to the stage's benchmark scores."""
        batch = [row for row in batch if _checkable(row)]
        for domain in sorted({row["domain"] for row in batch}):
            rows = [row for row in batch if row["domain"] == domain]
            k = self.eval_samples.get(domain, self.eval_sampling.samples_per_prompt)
            sampling = dataclasses.replace(self.eval_sampling, samples_per_prompt=k)
            rollout = self.rollout(rows, sampling)
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
    return bool(row.get("ground_truth")) and row["domain"] in DOMAINS
