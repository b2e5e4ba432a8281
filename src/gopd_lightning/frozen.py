"""``FrozenModels``: the frozen models of a run (a teacher per domain, the reference) and their scoring.

Every method that learns from teachers (G-OPD, SFT, the full-vocabulary loss) keeps them here:

- named by path: ``teachers`` (domain -> model) and ``reference`` (``"initial"``: the student's
  starting weights; a model path, e.g. the teacher's pre-RL base for reward correction; or None);
- checked before any weights load: every tokenizer must map tokens to the student's ids, and a
  model whose chat template differs from the student's gets its prompts rendered its own way;
- loaded frozen (eval mode, no gradients) in ``frozen_dtype``, optionally parked in CPU memory
  between uses (``offload``), and never written to checkpoints: the config rebuilds them;
- scoring the student's sampled tokens, each row by its own domain's teacher, in one order on
  every rank when the models are sharded (FSDP2 all-gathers must pair up across ranks).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gopd_lightning.logprobs import Head, full_vocab_kl_from_hidden, logprobs_from_hidden
from gopd_lightning.models import check_same_vocabulary, check_vocabulary_fits, freeze, load_causal_lm, load_tokenizer
from gopd_lightning.rollout import Rollout
from gopd_lightning.scoring import TokenScorer, frozen_head

INITIAL = "initial"
"""The reference that is the student's starting point (a frozen copy, or a LoRA student's base)."""
REFERENCE = "reference"


class FrozenScores(NamedTuple):
    """Log-probs [rows, time] of the sampled tokens under the frozen models."""

    teacher: Tensor
    """Each row's own domain teacher."""
    reference: Tensor | None
    """The reference (None when it is not used)."""
    non_finite: list[str]
    """The models (named with their path) that gave a kept token a NaN or inf log-prob on this rank."""


@dataclass
class FullVocabTarget:
    """What the full-vocabulary loss pulls one rollout's student towards: ``q`` of each row's teacher and the reference.

    Holds each frozen model's final hidden states at the response positions and its head, not its
    logits: :meth:`kl` applies the heads a chunk of positions at a time.
    """

    teachers: dict[str, tuple[Tensor, Head]]
    """domain -> (hidden states [rows of the domain, time, dim], head), rows in rollout order."""
    row_domains: list[str]
    reference: tuple[Tensor, Head] | None
    """(hidden states [rows, time, dim], head), or None when ``lam == 1``."""
    lam: float
    teacher_logp: Tensor
    """[rows, time] each row's teacher's log-prob of the sampled token (statistics, the finiteness guard)."""
    non_finite: list[str]
    """The models that gave a kept token a NaN or inf log-prob on this rank."""

    def kl(self, student_hidden: Tensor, student_head: Head, rows: Tensor, chunk_size: int) -> Tensor:
        """Per-position ``KL(pi_student || q)`` [len(rows), time] of rollout rows ``rows`` from their hidden states."""
        rows = rows.tolist()
        order, parts = [], []
        for domain, (hidden, head) in self.teachers.items():
            mine = [i for i, row in enumerate(rows) if self.row_domains[row] == domain]
            if not mine:
                continue
            of_domain = [r for r, d in enumerate(self.row_domains) if d == domain]
            teacher_rows = torch.tensor([of_domain.index(rows[i]) for i in mine], device=hidden.device)
            at = torch.tensor(mine, device=student_hidden.device)
            reference = None
            if self.reference is not None:
                reference_rows = torch.tensor([rows[i] for i in mine], device=self.reference[0].device)
                reference = (self.reference[0][reference_rows], self.reference[1])
            teacher = (hidden[teacher_rows], head)
            parts.append(
                full_vocab_kl_from_hidden((student_hidden[at], student_head), teacher, reference, self.lam, chunk_size)
            )
            order += mine
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(parts)[back.to(student_hidden.device)]


class FrozenModels(nn.Module):
    """Teachers by domain and an optional reference, frozen; see the module docstring."""

    def __init__(
        self,
        teachers: Mapping[str, str] | None,
        reference: str | None = None,
        dtype: str = "float32",
        offload: bool = False,
    ) -> None:
        super().__init__()
        self.teacher_paths = dict(teachers or {})
        self.reference_path = reference
        self.dtype = dtype
        self.offload = offload
        self.teachers = nn.ModuleDict()
        self.reference: PreTrainedModel | None = None
        self.tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        """Each frozen model's own tokenizer, by name."""
        self.own_templates: set[str] = set()
        """Names of the models whose chat template differs from the student's."""

    @staticmethod
    def teacher_name(domain: str) -> str:
        return f"teacher {domain!r}"

    def paths(self) -> dict[str, str]:
        """The models to load, by name: every teacher, and a reference that is not the student's start."""
        paths = {self.teacher_name(domain): path for domain, path in self.teacher_paths.items()}
        if self.reference_path not in (None, INITIAL):
            paths[REFERENCE] = self.reference_path
        return paths

    def check_tokenizers(self, student_tokenizer: PreTrainedTokenizerBase) -> None:
        """Same vocabulary as the student for every model (before any weights load); note differing chat templates."""
        for name, path in self.paths().items():
            tokenizer = load_tokenizer(path)
            check_same_vocabulary(student_tokenizer, tokenizer, f"{name} ({path})")
            self.tokenizers[name] = tokenizer
            if tokenizer.chat_template != student_tokenizer.chat_template:
                self.own_templates.add(name)

    def load(self, student: PreTrainedModel, student_tokenizer: PreTrainedTokenizerBase, lora: bool) -> list[nn.Module]:
        """Load every model frozen and return them (for sharding).

        The ``"initial"`` reference is a frozen copy of ``student`` in ``dtype``; for a LoRA
        student (``lora``) none is built: the base model is the student with its adapter off.
        """
        paths = self.paths()
        models = {name: freeze(load_causal_lm(path, self.dtype)) for name, path in paths.items()}
        for name, model in models.items():
            check_vocabulary_fits(model, student_tokenizer, f"{name} ({paths[name]})")
        self.teachers = nn.ModuleDict({domain: models[self.teacher_name(domain)] for domain in self.teacher_paths})
        if self.reference_path == INITIAL and not lora:
            self.reference = freeze(copy.deepcopy(student).to(getattr(torch, self.dtype)))
        elif REFERENCE in models:
            self.reference = models[REFERENCE]
        return [*self.teachers.values(), *([] if self.reference is None else [self.reference])]

    def check_domains(self, domains: Iterable[str]) -> None:
        """Raise a ValueError naming every domain that has no teacher."""
        missing = sorted(set(domains) - set(self.teacher_paths))
        if missing:
            raise ValueError(
                f"no teacher for domain(s) {missing}; teachers are given for "
                f"{sorted(self.teacher_paths)} (add them under model.teachers)"
            )

    def park(self) -> None:
        """With ``offload``, move every frozen model to CPU memory (each comes back to the device for its use)."""
        if self.offload:
            self.to("cpu")

    @torch.no_grad()
    def score(self, rollout: Rollout, scorer: TokenScorer, student: nn.Module, every_teacher: bool) -> FrozenScores:
        """Teacher log-probs (each row by its domain's teacher) and, when a reference is used, its log-probs.

        ``every_teacher`` (sharded models) runs every teacher on every rank in one order, on a
        placeholder row where the rank holds none of its domain. A LoRA student's ``"initial"``
        reference is ``student`` with its adapter disabled.
        """
        mask = rollout.response_mask
        teacher_logp = torch.zeros(rollout.response_ids.shape, device=rollout.input_ids.device)
        domains = [row["domain"] for row in rollout.rows]
        non_finite = []
        for domain in sorted(self.teachers) if every_teacher else sorted(set(domains)):
            rows = [i for i, d in enumerate(domains) if d == domain]
            index = torch.tensor(rows or [0], device=teacher_logp.device)
            part = rollout.select(index)
            logp = self._logprobs(self.teachers[domain], part, scorer, self.teacher_name(domain))
            if rows:
                teacher_logp[index] = logp
                if not torch.isfinite(logp[part.response_mask]).all():
                    non_finite.append(f"{self.teacher_name(domain)} ({self.teacher_paths[domain]})")
        if self.reference_path is None:
            return FrozenScores(teacher_logp, None, non_finite)
        if self.reference is None:  # a LoRA student: the base model is its adapter switched off
            with student.disable_adapter():
                ref_logp = scorer(student, rollout).logp
        else:
            ref_logp = self._logprobs(self.reference, rollout, scorer, REFERENCE)
        if not torch.isfinite(ref_logp[mask]).all():
            non_finite.append(f"the reference ({self.reference_path})")
        return FrozenScores(teacher_logp, ref_logp, non_finite)

    @torch.no_grad()
    def full_vocab_target(
        self, rollout: Rollout, scorer: TokenScorer, student: nn.Module, lam: float, every_teacher: bool
    ) -> FullVocabTarget:
        """The full-vocabulary loss's target for ``rollout``: each frozen model's hidden states and head.

        Heads are kept on the rollout's device (offloaded models go back to CPU memory); a LoRA
        student's ``"initial"`` reference is ``student`` with its adapter disabled. ``every_teacher``
        (sharded models) runs every teacher on every rank in one order, as :meth:`score` does.
        """
        device, mask = rollout.input_ids.device, rollout.response_mask
        domains = [row["domain"] for row in rollout.rows]
        teacher_logp = torch.zeros(rollout.response_ids.shape, device=device)
        teachers, non_finite = {}, []
        for domain in sorted(self.teachers) if every_teacher else sorted(set(domains)):
            rows = [i for i, d in enumerate(domains) if d == domain]
            index = torch.tensor(rows or [0], device=device)
            part, model, name = rollout.select(index), self.teachers[domain], self.teacher_name(domain)
            hidden, head = self._hidden_and_head(model, part, scorer, name, device)
            if not rows:  # a placeholder row: this rank joined the collectives of a domain it does not hold
                continue
            teachers[domain] = (hidden, head)
            teacher_logp[index] = logprobs_from_hidden(hidden, head, part.response_ids, scorer.chunk_size).logp
            if not torch.isfinite(teacher_logp[index][part.response_mask]).all():
                non_finite.append(f"{name} ({self.teacher_paths[domain]})")
        reference = None
        if self.reference_path is not None:
            if self.reference is None:  # a LoRA student: the base model is its adapter switched off
                with student.disable_adapter():
                    reference = (
                        scorer.hidden_states(student, rollout),
                        frozen_head(student, scorer.vocab_size, device),
                    )
            else:
                reference = self._hidden_and_head(self.reference, rollout, scorer, REFERENCE, device)
            ref_logp = logprobs_from_hidden(*reference, rollout.response_ids, scorer.chunk_size).logp
            if not torch.isfinite(ref_logp[mask]).all():
                non_finite.append(f"the reference ({self.reference_path})")
        return FullVocabTarget(teachers, domains, reference, lam, teacher_logp, non_finite)

    def _hidden_and_head(
        self, model: PreTrainedModel, rollout: Rollout, scorer: TokenScorer, name: str, device: torch.device
    ) -> tuple[Tensor, Head]:
        prompt_tokenizer = self.tokenizers[name] if name in self.own_templates else None
        with self.on_device(model, device):
            return scorer.hidden_states(model, rollout, prompt_tokenizer), frozen_head(model, scorer.vocab_size, device)

    def teacher_tokenizer(self, domain: str) -> PreTrainedTokenizerBase:
        """The teacher's own tokenizer (its chat template renders the prompts it answers)."""
        return self.tokenizers[self.teacher_name(domain)]

    def _logprobs(self, model: PreTrainedModel, rollout: Rollout, scorer: TokenScorer, name: str) -> Tensor:
        prompt_tokenizer = self.tokenizers[name] if name in self.own_templates else None
        with self.on_device(model, rollout.input_ids.device):
            return scorer(model, rollout, prompt_tokenizer).logp

    @contextmanager
    def on_device(self, model: nn.Module, device: torch.device) -> Iterator[None]:
        """``model`` on ``device`` for the block; with ``offload``, back to CPU memory after it."""
        if not self.offload:
            yield
            return
        model.to(device)
        try:
            yield
        finally:
            model.to("cpu")


def keep_out_of_checkpoints(owner: nn.Module, attribute: str = "frozen") -> None:
    """Make ``owner``'s ``FrozenModels`` (at ``attribute``) leave checkpoints: not saved, not expected on load."""
    frozen = f"{attribute}."

    def drop(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
        for key in [k for k in state_dict if k[len(prefix) :].startswith(frozen)]:
            del state_dict[key]

    def ignore_missing(module: nn.Module, incompatible_keys) -> None:  # noqa: ANN001 - torch's named tuple
        incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if not k.startswith(frozen)]

    owner.register_state_dict_post_hook(drop)
    owner.register_load_state_dict_post_hook(ignore_missing)
