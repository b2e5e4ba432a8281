"""``GOPDModule``: the LightningModule that trains a student with Generalized On-Policy Distillation.

One training step reads top to bottom in ``training_step``, in the paper's order:

    rows (prompt, domain, ground_truth)
      1. rollout: chat template -> student ``generate``               (policy.PolicyModule.rollout)
      2. score: each row's domain teacher and the reference score
         the sampled tokens (no_grad, fp32, chunked)                 (frozen.FrozenModels.score)
      3. advantages: lam * (teacher - ref) - (student - ref)          (objective.DistillationAdvantages)
         or, with ``estimator: full_vocab``, the target q over the whole
         vocabulary at every position                                (frozen.FullVocabTarget)
      4. loss and 5. update: policy gradient (or KL to q) -> step(s)  (policy.PolicyModule.update_policy)
      -> the step's statistics go to the logging callback             (callbacks.StepStatistics)

From ``gopd fit`` to the optimiser step that is four files: ``cli.py`` (LightningCLI runs
``Trainer.fit``), this one, ``policy.py`` (the update) and ``objective.py`` (advantages and loss).

Features:
- Any number of teachers keyed by domain; every row is scored by its own domain's teacher.
- Two estimators of one gradient: ``sampled`` (the paper's, the default: each sampled token's
  advantage) and ``full_vocab``, its Rao-Blackwellised form: at every response position the exact
  ``KL(pi_student || q)``, ``q`` proportional to ``pi_teacher^lam * pi_ref^(1 - lam)``, the same
  expected update without the variance of the sampled token; every model's head is applied a chunk
  of positions at a time, so no [rows, time, vocab] tensor exists.
- The reference is a frozen copy of the student's initial weights by default, or any model;
  it is never built when ``lam == 1`` (it cancels out of the objective).
- Frozen models (:class:`~gopd_lightning.frozen.FrozenModels`) are built in ``configure_model``
  (so a sharding strategy can wrap each), frozen, and left out of the optimiser and of
  checkpoints; the config rebuilds them on resume.
- Manual optimisation, so one rollout batch can be split into several optimiser updates (PPO
  clip then matters) and micro-batches (gradient accumulation) without changing the gradient;
  benchmark evaluation with avg@k and pass@k.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from gopd_lightning.frozen import INITIAL, FrozenModels, FullVocabTarget
from gopd_lightning.objective import DistillationAdvantages
from gopd_lightning.policy import PolicyModule
from gopd_lightning.rollout import Rollout
from gopd_lightning.step_stats import RolloutStatistics


class GOPDModule(PolicyModule):
    """Distil teachers into a student with the G-OPD objective (see the module docstring)."""

    def __init__(
        self,
        student: str,
        teachers: dict[str, str],
        reference: str | None = INITIAL,
        lam: float = 1.0,
        frozen_dtype: str = "float32",
        offload_frozen: bool = False,
        estimator: Literal["sampled", "full_vocab"] = "sampled",
        train_accuracy: bool = True,
        **policy_options: Any,
    ) -> None:
        """
        Args:
            student: path, hub id or ``toy:<name>`` of the model to train.
            teachers: domain -> teacher model; each row is scored by its domain's teacher.
            reference: "initial" (the student's initial weights: a frozen copy, or for a LoRA
                student the base model with the adapter disabled, with no second copy), a model
                path (e.g. the teacher's pre-RL base, for reward correction), or None (only with
                lam 1).
            lam: reward scale lambda: 1 = OPD, > 1 = ExOPD (1.25 in the paper), < 1 interpolation.
            frozen_dtype: weights of the teachers and the reference.
            offload_frozen: keep the teachers and the reference in CPU memory between uses.
            estimator: "sampled" (the paper's: each sampled token's advantage) or "full_vocab" (the
                exact per-position KL to q over the whole vocabulary: the same expected gradient,
                without the sampling variance of the token).
            train_accuracy: score each training rollout's answers for ``train/accuracy``. Only logged (the
                loss never reads it); off saves a sandbox run per code row per step, the bulk of a toy
                multi-teacher step on a CPU.
            policy_options: the student's options, as in :class:`~gopd_lightning.policy.PolicyModule`
                (sampling, eval_sampling, eval_samples, eval_pass_k, update, max_prompt_length,
                logprob_chunk_size, student_dtype, optimizer, lr_scheduler, lora,
                chat_template_kwargs, sharding).
        """
        super().__init__(student, **policy_options)
        if not teachers:
            raise ValueError("teachers is empty: give at least one domain -> teacher model")
        if not lam > 0:
            raise ValueError(
                f"lam={lam!r} is invalid: the reward scale must be > 0 (1 = OPD, 1.25 = the paper's ExOPD)"
            )
        if lam != 1.0 and reference is None:
            raise ValueError(
                f"lam={lam} needs a reference model (lam == 1 is the only case where it cancels); "
                f"set reference to {INITIAL!r} (the student's initial weights) or a model path"
            )
        if estimator not in ("sampled", "full_vocab"):
            raise ValueError(f"estimator={estimator!r} is invalid: choose 'sampled' (the paper's) or 'full_vocab'")
        self.lam = float(lam)
        """The reward scale lambda."""
        self.estimator = estimator
        self.train_accuracy = train_accuracy
        used_reference = None if self.lam == 1.0 else reference
        self.frozen = FrozenModels(teachers, used_reference, frozen_dtype, offload_frozen)

    def setup(self, stage: str) -> None:
        """Fail early when the training data holds a domain that has no teacher."""
        super().setup(stage)
        domains = getattr(self.trainer.datamodule, "domains", None) if self._trainer is not None else None
        if stage == "fit" and domains:
            self.frozen.check_domains(domains)

    def training_step(self, batch: list[dict], batch_idx: int) -> dict[str, Any]:
        self.frozen.check_domains(row["domain"] for row in batch)
        rollout = self.rollout(batch, self.sampling)
        teacher_logp, objective = self.distillation_objective(rollout)
        update = self.update_policy(rollout, objective)
        statistics = RolloutStatistics(
            rollout,
            tokens={"reverse_kl": update.student_logp - teacher_logp, "entropy": update.entropy, **update.per_token},
            rows={"accuracy": self.accuracy(rollout)} if self.train_accuracy else {},  # code runs in the sandbox
        )
        return {"loss": update.loss, "statistics": statistics}

    def distillation_objective(self, rollout: Rollout) -> tuple[Tensor, DistillationAdvantages | FullVocabTarget]:
        """The teachers' log-probs of the sampled tokens, and what the update follows: advantages, or the target q."""
        if self.estimator == "sampled":
            teacher_logp, ref_logp = self.score_frozen(rollout)
            return teacher_logp, DistillationAdvantages(teacher_logp, ref_logp, self.lam)
        target = self.frozen.full_vocab_target(rollout, self.scorer, self.student, self.lam, self.sharded)
        named = " and ".join(target.non_finite) or "a frozen model (on another rank)"
        self.stop_if(bool(target.non_finite), f"the log-probs of {named}")
        return target.teacher_logp, target

    def score_frozen(self, rollout: Rollout) -> tuple[Tensor, Tensor | None]:
        """Teacher and (lam != 1) reference log-probs of the sampled tokens; a NaN or inf stops the run (named)."""
        scores = self.frozen.score(rollout, self.scorer, self.student, every_teacher=self.sharded)
        named = " and ".join(scores.non_finite) or "a frozen model (on another rank)"
        self.stop_if(bool(scores.non_finite), f"the log-probs of {named}")
        return scores.teacher, scores.reference
