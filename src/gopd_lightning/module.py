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
- Built on :class:`~gopd_lightning.policy.PolicyModule`: manual optimisation, so one rollout batch
  can be split into several optimiser updates (PPO clip then matters) and micro-batches (gradient
  accumulation) without changing the gradient; benchmark evaluation with avg@k and pass@k.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gopd_lightning.models import check_same_vocabulary, check_vocabulary_fits, freeze, load_causal_lm, load_tokenizer
from gopd_lightning.objective import token_advantages
from gopd_lightning.policy import PolicyModule
from gopd_lightning.rollout import Rollout

INITIAL = "initial"
FROZEN_PREFIXES = ("teachers.", "reference.")


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
        self.teachers: nn.ModuleDict | None = None
        self.reference: PreTrainedModel | None = None
        # tokenizers of frozen models whose chat template differs from the student's
        self.prompt_tokenizers: dict[str, PreTrainedTokenizerBase] = {}
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
    def frozen_model_paths(self) -> dict[str, str]:
        """Frozen models to load by name: every teacher, and a reference that is not the student's start."""
        hp = self.hparams
        paths = {f"teacher {domain!r}": path for domain, path in hp.teachers.items()}
        if self.needs_reference and hp.reference != INITIAL:
            paths["reference"] = hp.reference
        return paths

    def check_frozen_tokenizers(self) -> None:
        """Same vocabulary as the student; a different chat template re-renders that model's prompts."""
        for name, path in self.frozen_model_paths().items():
            tokenizer = load_tokenizer(path)
            check_same_vocabulary(self.tokenizer, tokenizer, f"{name} ({path})")
            if tokenizer.chat_template != self.tokenizer.chat_template:
                self.prompt_tokenizers[name] = tokenizer

    def load_frozen_models(self) -> list[nn.Module]:
        """The teachers and, when lam != 1, the reference, frozen."""
        hp = self.hparams
        if self.device_mesh is not None and hp.offload_frozen:
            raise ValueError("offload_frozen does not combine with FSDP2, which shards the frozen models instead")
        paths = self.frozen_model_paths()
        models = {name: freeze(load_causal_lm(path, hp.frozen_dtype)) for name, path in paths.items()}
        for name, model in models.items():
            check_vocabulary_fits(model, self.tokenizer, f"{name} ({paths[name]})")
        self.teachers = nn.ModuleDict({domain: models[f"teacher {domain!r}"] for domain in hp.teachers})
        if self.needs_reference and hp.reference == INITIAL and not hp.lora:
            self.reference = freeze(copy.deepcopy(self.student).to(getattr(torch, hp.frozen_dtype)))
        elif "reference" in models:
            self.reference = models["reference"]
        return [*self.teachers.values(), *([] if self.reference is None else [self.reference])]

    def setup(self, stage: str) -> None:
        """Fail early when the data holds a domain that has no teacher."""
        super().setup(stage)
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

    # ---------------------------------------------------------------- training
    def training_step(self, batch: list[dict], batch_idx: int) -> Tensor:
        self.check_domains(row["domain"] for row in batch)
        rollout = self.rollout(batch, self.sampling)
        teacher_logp, ref_logp = self.score_frozen(rollout)

        def advantage_fn(student_logp: Tensor, rows: Tensor) -> Tensor:
            return token_advantages(
                student_logp, teacher_logp[rows], None if ref_logp is None else ref_logp[rows], self.lam
            )

        loss, student_logp, entropy, advantages = self.optimise(rollout, advantage_fn)
        self.log_step_stats(
            "train",
            rollout,
            {"advantage": advantages, "reverse_kl": student_logp - teacher_logp, "entropy": entropy},
            {"accuracy": self.accuracy(rollout)},  # scored once: code runs in the sandbox
            prog_bar=("reverse_kl", "accuracy"),
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=True)  # mean over ranks
        return loss

    @torch.no_grad()
    def score_frozen(self, rollout: Rollout) -> tuple[Tensor, Tensor | None]:
        """Teacher log-probs (each row by its own domain's teacher) and reference log-probs.

        Under FSDP2 every teacher runs on every rank in one order, on a placeholder row when the
        rank holds none of its domain, so that the ranks' all-gathers pair up. A non-finite
        log-prob of a kept token stops the run, naming the model.
        """
        teacher_logp = torch.zeros(rollout.response_ids.shape, device=rollout.input_ids.device)
        domains = [row["domain"] for row in rollout.rows]
        broken = []
        for domain in sorted(self.teachers) if self.sharded else sorted(set(domains)):
            rows = [i for i, d in enumerate(domains) if d == domain]
            index = torch.tensor(rows or [0], device=teacher_logp.device)
            part = rollout.select(index)
            logp = self._frozen_logprobs(self.teachers[domain], part, f"teacher {domain!r}")
            if rows:
                teacher_logp[index] = logp
                if not torch.isfinite(logp[part.response_mask]).all():
                    broken.append(f"teacher {domain!r} ({self.hparams.teachers[domain]})")
        named = " and ".join(broken) or "a teacher (on another rank)"
        self.stop_unless_finite(teacher_logp, rollout.response_mask, f"the log-probs of {named}")
        if not self.needs_reference:
            return teacher_logp, None
        if self.reference is None:  # a LoRA student: the base model is its adapter switched off
            with self.student.disable_adapter():
                ref_logp = self.logprobs_of(self.student, rollout).logp
        else:
            ref_logp = self._frozen_logprobs(self.reference, rollout, "reference")
        self.stop_unless_finite(
            ref_logp, rollout.response_mask, f"the reference's log-probs ({self.hparams.reference})"
        )
        return teacher_logp, ref_logp

    def _frozen_logprobs(self, model: PreTrainedModel, rollout: Rollout, name: str) -> Tensor:
        with offloaded(model, self.device, self.hparams.offload_frozen):
            return self.logprobs_of(model, rollout, self.prompt_tokenizers.get(name)).logp

    def on_fit_start(self) -> None:
        """With ``offload_frozen``, move the frozen models to CPU memory once the trainer placed them."""
        if self.hparams.offload_frozen:
            for model in [*self.teachers.values(), self.reference]:
                if model is not None:
                    model.to("cpu")


@contextmanager
def offloaded(model: nn.Module, device: torch.device, enabled: bool) -> Iterator[None]:
    """Move ``model`` to ``device`` for the block and back to the CPU after it, when ``enabled``."""
    if not enabled:
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to("cpu")


def _drop_frozen_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k[len(prefix) :].startswith(FROZEN_PREFIXES)]:
        del state_dict[key]


def _ignore_missing_frozen_keys(module: nn.Module, incompatible_keys) -> None:  # noqa: ANN001
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not k.startswith(FROZEN_PREFIXES)]
