"""``PolicyModule``: what every trainer of a sampling student shares, as steps a ``training_step`` calls.

- ``configure_model``: the student, its tokenizer and the run's frozen models (``self.frozen``,
  set by a subclass: :class:`~gopd_lightning.frozen.FrozenModels`), sharded under FSDP2;
- ``rollout``: the student samples responses to a batch of rows;
- ``update_policy``: a rollout's advantages become optimiser updates (the paper's one on-policy
  update, or PPO's clipped updates), with micro-batches that do not change the gradient;
- ``accuracy``: each response checked against its row's ground truth;
- evaluation: k samples per problem, scored into avg@k and pass@k per benchmark and domain.

A ``training_step`` returns ``{"loss", "statistics"}``; callbacks log them and the benchmark scores
(:class:`~gopd_lightning.callbacks.StepStatistics`, :class:`~gopd_lightning.callbacks.BenchmarkAccuracy`).
:class:`~gopd_lightning.distillation.GOPDModule` (distillation) and the baselines build on it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gopd_lightning.checkpointing import AtomicCheckpointIO, NonFiniteError
from gopd_lightning.frozen import FrozenModels, FullVocabTarget, keep_out_of_checkpoints
from gopd_lightning.logprobs import TokenScores, logprobs_from_hidden
from gopd_lightning.metrics import BenchmarkScores
from gopd_lightning.models import check_vocabulary_fits, load_causal_lm, load_tokenizer
from gopd_lightning.objective import AGGREGATIONS, Advantages, Aggregation, aggregate, policy_gradient_loss
from gopd_lightning.rewards import DOMAINS, score_batch
from gopd_lightning.rollout import Rollout, SamplingConfig, eval_mode, generate_rollout
from gopd_lightning.scoring import TokenScorer, output_head
from gopd_lightning.sharding import ShardingConfig, parallelize, unsharded_generation
from gopd_lightning.step_stats import domains_on_every_rank

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
        self.max_prompt_length = max_prompt_length
        self.eval_samples = dict(eval_samples or {})
        self.scores = nn.ModuleDict({stage: BenchmarkScores(eval_pass_k or ()) for stage in ("val", "test")})
        self.optimizer_factory: Callable[[Iterable[nn.Parameter]], Optimizer] = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.automatic_optimization = False
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.student: PreTrainedModel | None = None
        self.scorer: TokenScorer | None = None
        self.frozen: FrozenModels | None = None
        """The run's teachers and reference, when the method has any (set by the subclass)."""
        keep_out_of_checkpoints(self)

    def configure_model(self) -> None:
        """Load the tokenizer, the student and the frozen models, once (Lightning may call this again).

        Every frozen model's tokenizer is checked before any weights load, so a vocabulary mismatch
        fails fast. Then activation checkpointing and, under a device mesh, FSDP2 apply to every model.
        """
        if self.student is not None:
            return
        self.tokenizer = load_tokenizer(self.hparams.student)
        self.scorer = TokenScorer(len(self.tokenizer), self.hparams.logprob_chunk_size, self.chat_template_kwargs)
        if self.frozen is not None:
            if self.device_mesh is not None and self.frozen.offload:
                raise ValueError("offload_frozen does not combine with FSDP2, which shards the frozen models instead")
            self.frozen.check_tokenizers(self.tokenizer)
        student = load_causal_lm(self.hparams.student, self.hparams.student_dtype)
        check_vocabulary_fits(student, self.tokenizer, f"student ({self.hparams.student})")
        if self.hparams.get("lora"):
            from peft import LoraConfig, get_peft_model

            student = get_peft_model(student, LoraConfig(task_type="CAUSAL_LM", **self.hparams.lora))
        self.student = student.train()
        frozen = (
            []
            if self.frozen is None
            else self.frozen.load(self.student, self.tokenizer, bool(self.hparams.get("lora")))
        )
        parallelize(self.student, frozen, self.device_mesh, self.sharding)

    def setup(self, stage: str) -> None:
        """Checkpoints of single files are written atomically (see ``gopd_lightning.checkpointing``)."""
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()

    def on_fit_start(self) -> None:
        """With ``offload_frozen``, park the frozen models in CPU memory once the trainer placed them."""
        if self.frozen is not None:
            self.frozen.park()

    def stop_if(self, bad: bool, what: str) -> None:
        """Raise :class:`NonFiniteError` on every rank when ``bad`` on any rank: ``what`` is not finite.

        Checked before the optimiser step, so neither the student nor a checkpoint takes the bad step.
        """
        if self._trainer is not None:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            step = self.trainer.global_step if self._trainer is not None else "?"
            raise NonFiniteError(
                f"{what} is not finite (NaN or inf) at step {step}; the run stops before the optimiser step, "
                "and the last checkpoint is left as it was"
            )

    @property
    def sharded(self) -> bool:
        """Whether the models are FSDP2-sharded: every forward is then a collective that all ranks must join."""
        return self.device_mesh is not None

    def rollout(self, rows: list[dict], sampling: SamplingConfig, training: bool = True) -> Rollout:
        """Sample responses to ``rows`` from the student (gathered whole for the call under FSDP2).

        Training prompts are held to ``max_prompt_length``; evaluation prompts are not (a benchmark is scored whole).
        """
        limit = self.max_prompt_length if training else None
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
            return self.scorer(self.student, rollout, sampler=rollout.sampling)

    # ---------------------------------------------------------------- the update
    def update_policy(self, rollout: Rollout, advantages: Advantages | FullVocabTarget) -> PolicyUpdate:
        """Turn one rollout's advantages (or full-vocabulary target) into optimiser updates, then step the schedule.

        The rows are split into ``updates_per_rollout`` mini-batches of near-equal size (one
        optimiser step each), each into micro-batches of ``micro_batch_size`` (gradient
        accumulation). Each micro-batch loss is weighted by its share of the mini-batch's
        normaliser (sequences, or tokens for "token-mean"), so accumulation gives exactly the
        mini-batch's gradient. With one update (the paper) the advantages come from the same
        forward pass as the gradient; with several, PPO's clipped ratio to the rollout policy
        applies (unless ``ratio_to_rollout`` is off). When another sampler than the student's own
        distribution drew the tokens, each token's term carries the truncated importance weight
        ``min(pi_theta / pi_sampler, 5)``. A :class:`~gopd_lightning.frozen.FullVocabTarget` makes every
        update minimise the exact per-position ``KL(pi_theta || q)`` on the rollout's contexts instead.
        """
        rows, updates = len(rollout.rows), self.update.updates_per_rollout
        if updates > rows:
            raise ValueError(f"update.updates_per_rollout={updates} is more than the {rows} rows of a rollout batch")
        if isinstance(advantages, FullVocabTarget):
            result = self._full_vocab_updates(rollout, advantages)
        elif updates > 1 and self.ratio_to_rollout:
            result = self._clipped_updates(rollout, advantages)
        else:
            result = self._fresh_updates(rollout, advantages)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return result

    def _fresh_updates(self, rollout: Rollout, advantages: Advantages) -> PolicyUpdate:
        """Updates whose advantages come from each micro-batch's own forward pass (on-policy; SFT)."""
        shape, device = rollout.response_ids.shape, rollout.input_ids.device
        student_logp, entropy, token_advantages = (torch.zeros(shape, device=device) for _ in range(3))
        minis, losses = self._mini_batches(len(rollout.rows)), []
        for mini in minis:
            normaliser = self._normaliser(rollout.response_mask[mini])
            for micro in mini.split(self._micro_size(rollout)):
                part = rollout.select(micro)
                scores = self.student_logprobs(part)
                student_logp[micro], entropy[micro] = scores.logp.detach(), scores.entropy
                token_advantages[micro] = advantages.of(scores.logp.detach(), micro)
                loss = policy_gradient_loss(
                    scores.logp,
                    token_advantages[micro],
                    part.response_mask,
                    sampler_logp=scores.sampler_logp,
                    aggregation=self.update.aggregation,
                )
                losses.append(self._backward(loss, part, normaliser))
            self._optimiser_step()
        loss = torch.stack(losses).sum() / len(minis)
        return PolicyUpdate(loss, student_logp, entropy, {"advantage": token_advantages})

    def _full_vocab_updates(self, rollout: Rollout, target: FullVocabTarget) -> PolicyUpdate:
        """Updates that minimise ``KL(pi_theta || q)`` at every response position (heads applied a chunk at a time)."""
        shape, device = rollout.response_ids.shape, rollout.input_ids.device
        student_logp, entropy, target_kl = (torch.zeros(shape, device=device) for _ in range(3))
        head, chunk = output_head(self.student, self.scorer.vocab_size), self.scorer.chunk_size
        minis, losses = self._mini_batches(len(rollout.rows)), []
        for mini in minis:
            normaliser = self._normaliser(rollout.response_mask[mini])
            for micro in mini.split(self._micro_size(rollout)):
                part = rollout.select(micro)
                with eval_mode(self.student, keep_checkpointed_layers=True):
                    hidden = self.scorer.hidden_states(self.student, part)
                kl = target.kl(hidden, head, micro, chunk)
                with torch.no_grad():
                    scores = logprobs_from_hidden(hidden, head, part.response_ids, chunk)
                student_logp[micro], entropy[micro], target_kl[micro] = scores.logp, scores.entropy, kl.detach().float()
                loss = aggregate(kl, part.response_mask, self.update.aggregation)
                losses.append(self._backward(loss, part, normaliser))
            self._optimiser_step()
        loss = torch.stack(losses).sum() / len(minis)
        return PolicyUpdate(loss, student_logp, entropy, {"target_kl": target_kl})

    def _clipped_updates(self, rollout: Rollout, advantages: Advantages) -> PolicyUpdate:
        """PPO: log-probs, advantages and sampler weights of the rollout policy are fixed before the first update."""
        old_logp, entropy, sampler_logp = self._rollout_policy_scores(rollout)
        token_advantages = advantages.of(old_logp, torch.arange(len(rollout.rows)))
        minis, losses = self._mini_batches(len(rollout.rows)), []
        for mini in minis:
            normaliser = self._normaliser(rollout.response_mask[mini])
            for micro in mini.split(self._micro_size(rollout)):
                part = rollout.select(micro)
                loss = policy_gradient_loss(
                    self.student_logprobs(part).logp,
                    token_advantages[micro],
                    part.response_mask,
                    old_logp=old_logp[micro],
                    sampler_logp=None if sampler_logp is None else sampler_logp[micro],
                    clip_eps=self.update.clip_eps,
                    aggregation=self.update.aggregation,
                )
                losses.append(self._backward(loss, part, normaliser))
            self._optimiser_step()
        loss = torch.stack(losses).sum() / len(minis)
        return PolicyUpdate(loss, old_logp, entropy, {"advantage": token_advantages})

    @torch.no_grad()
    def _rollout_policy_scores(self, rollout: Rollout) -> tuple[Tensor, Tensor, Tensor | None]:
        """Log-probs, entropy and (another sampler drew the tokens) sampler log-probs before any update."""
        parts = [
            self.student_logprobs(rollout.select(slice(start, start + self._micro_size(rollout))))
            for start in range(0, len(rollout.rows), self._micro_size(rollout))
        ]
        sampler = [part.sampler_logp for part in parts if part.sampler_logp is not None]
        return (
            torch.cat([part.logp for part in parts]),
            torch.cat([part.entropy for part in parts]),
            torch.cat(sampler) if sampler else None,
        )

    def _mini_batches(self, rows: int) -> list[Tensor]:
        updates = self.update.updates_per_rollout
        return list(torch.randperm(rows).tensor_split(updates)) if updates > 1 else [torch.arange(rows)]

    def _micro_size(self, rollout: Rollout) -> int:
        return self.update.micro_batch_size or len(rollout.rows)

    def _backward(self, loss: Tensor, part: Rollout, normaliser: Tensor) -> Tensor:
        """Backpropagate a micro-batch's share of its mini-batch loss; return it detached."""
        loss = loss * self._normaliser(part.response_mask) / normaliser
        self.stop_if(not bool(torch.isfinite(loss)), "the loss (the student's log-probs or the advantages)")
        self.manual_backward(loss)
        return loss.detach()

    def _optimiser_step(self) -> None:
        optimizer = self.optimizers()
        if self.update.max_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.update.max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def _normaliser(self, mask: Tensor) -> Tensor:
        if self.update.aggregation == "token-mean":
            return mask.sum().clamp_min(1).float()
        return (mask.sum(dim=-1) > 0).sum().clamp_min(1).float()

    # ---------------------------------------------------------------- answers and evaluation
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

    def on_validation_epoch_start(self) -> None:
        self.scores["val"].reset()

    def on_test_epoch_start(self) -> None:
        self.scores["test"].reset()

    def evaluate(self, stage: str, batch: list[dict]) -> None:
        """Sample k responses per problem (k by domain) and add them to the stage's benchmark scores.

        Padding rows (the evaluation sampler evens the ranks out with them) are not scored. Under
        FSDP2 every rank samples every domain that any rank holds, in one order (a rank without
        that domain samples a placeholder it throws away), so the ranks' collectives pair up.
        :class:`~gopd_lightning.callbacks.BenchmarkAccuracy` logs the scores at the end of the run.
        """
        scored = [row for row in batch if _checkable(row)]
        present = sorted({row["domain"] for row in scored})
        for domain in domains_on_every_rank(present) if self.sharded else present:
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


class PolicyUpdate(NamedTuple):
    """What one rollout's updates leave: the mean loss, and per token the student log-prob, entropy and more."""

    loss: Tensor
    student_logp: Tensor
    entropy: Tensor
    per_token: dict[str, Tensor]
    """``advantage`` (the sampled estimator) or ``target_kl`` (the full-vocabulary loss), [rows, time]."""


def _checkable(row: Mapping) -> bool:
    return bool(row.get("ground_truth")) and row["domain"] in DOMAINS and not row.get("padding")
