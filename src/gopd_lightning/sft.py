"""``SFTModule``: the paper's SFT baseline, off-policy distillation by cross-entropy on teacher responses.

Where G-OPD trains the student on its own samples scored by the teacher, SFT trains it to imitate
responses the teacher wrote. One training step:

    rows (prompt, domain, ground_truth)
      -> each row's domain teacher samples a response (frozen, no_grad, its own chat template),
         or the row's stored response is used
      -> student chat prompt + response ids + EOS                 (responses_rollout)
      -> token-mean cross-entropy of the student on the response tokens, EOS included
      -> optimiser step

Stored responses: a row that carries a ``response`` (text, without EOS) is not sent to a teacher.
The DataModule keeps only the schema fields, so stored responses come from ``responses``: a
.jsonl file of ``{"id", "response"}`` objects matched to the rows by ``id``. A data file in the
schema with an extra ``response`` field serves as both: ``data.train: [{path: rows.jsonl}]`` and
``model.responses: rows.jsonl``. With responses for every row no teacher is needed.

Teachers are :class:`~gopd_lightning.frozen.FrozenModels`, as in
:class:`~gopd_lightning.distillation.GOPDModule`: built in ``configure_model``, frozen, and kept out
of the optimiser and of checkpoints (the config rebuilds them). Evaluation is
:class:`~gopd_lightning.policy.PolicyModule`'s: the student samples, answers are checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from gopd_lightning.frozen import FrozenModels
from gopd_lightning.objective import SequenceAdvantages, aggregate
from gopd_lightning.policy import PolicyModule, UpdateConfig
from gopd_lightning.rollout import Rollout, encode_prompts, generate_rollout
from gopd_lightning.sharding import unsharded_generation
from gopd_lightning.step_stats import RolloutStatistics


class SFTModule(PolicyModule):
    """Cross-entropy of the student on teacher-written responses (see the module docstring)."""

    ratio_to_rollout = False  # every mini-batch is plain cross-entropy: no PPO ratio, no clip

    def __init__(
        self,
        student: str,
        teachers: dict[str, str] | None = None,
        responses: str | None = None,
        frozen_dtype: str = "float32",
        **policy_options: Any,
    ) -> None:
        """
        Args:
            student: path, hub id or ``toy:<name>`` of the model to train.
            teachers: domain -> teacher model that writes the responses of that domain's rows.
            responses: a .jsonl file of ``{"id", "response"}``: stored responses of rows by id.
            frozen_dtype: weights of the teachers.
            policy_options: the student's options, as in :class:`~gopd_lightning.policy.PolicyModule`;
                here ``sampling`` is how the teachers sample the responses to imitate (temperature
                1 in the paper), and ``update`` defaults to the mean over all response tokens of
                the batch ("token-mean").
        """
        if policy_options.get("update") is None:  # the CLI passes update=None when a config leaves it out
            policy_options["update"] = UpdateConfig(aggregation="token-mean")
        super().__init__(student, **policy_options)
        if not teachers and not responses:
            raise ValueError(
                "SFT needs responses to imitate: give teachers (domain -> model), a responses file, or both"
            )
        self.stored_responses = read_responses(responses) if responses else {}
        self.frozen = FrozenModels(teachers, None, frozen_dtype)

    def training_step(self, batch: list[dict], batch_idx: int) -> dict[str, Any]:
        rollout = self.imitation_rollout(batch)
        # the policy gradient with advantage 1 on the teacher's tokens, -agg(exp(logp - sg(logp))),
        # has exactly the gradient of the cross-entropy -agg(logp)
        update = self.update_policy(rollout, SequenceAdvantages(torch.ones(len(rollout.rows))))
        statistics = RolloutStatistics(
            rollout, tokens={"entropy": update.entropy}, rows={"accuracy": self.accuracy(rollout)}
        )  # the accuracy of the imitated responses
        loss = -aggregate(update.student_logp, rollout.response_mask, self.update.aggregation)  # the cross-entropy
        return {"loss": loss, "statistics": statistics}

    def imitation_rollout(self, rows: Sequence[Mapping]) -> Rollout:
        """The student's prompts followed by the responses to imitate: stored ones, else the teacher's samples.

        A stored response is used once; a teacher writes ``sampling.samples_per_prompt`` responses per row.
        """
        stored = [(row, self.stored_response(row)) for row in rows]
        eos = [self.tokenizer.eos_token_id]
        imitated = [
            (row, self.tokenizer(text, add_special_tokens=False)["input_ids"] + eos)
            for row, text in stored
            if text is not None
        ]
        unanswered = [row for row, text in stored if text is None]
        teachers = self.frozen.teachers
        missing = sorted({row["domain"] for row in unanswered} - set(teachers))
        if missing:
            raise ValueError(
                f"rows of domain(s) {missing} have no stored response and no teacher; teachers are given for "
                f"{sorted(teachers)} (add one under model.teachers, or store responses)"
            )
        # under FSDP2 every teacher generates on every rank (a placeholder row where a rank has none)
        for domain in sorted(teachers) if self.sharded else sorted({row["domain"] for row in unanswered}):
            rows = [row for row in unanswered if row["domain"] == domain]
            if rows:
                imitated += self.teacher_responses(domain, rows)
            else:
                self.teacher_responses(domain, [stored[0][0]])
        return responses_rollout(
            self.tokenizer,
            [row for row, _ in imitated],
            [ids for _, ids in imitated],
            self.max_prompt_length,
            self.chat_template_kwargs,
            self.device,
        )

    def stored_response(self, row: Mapping) -> str | None:
        """The row's own ``response``, else the one stored for its id in ``responses``, else None."""
        return row.get("response", self.stored_responses.get(str(row["id"])))

    @torch.no_grad()
    def teacher_responses(self, domain: str, rows: Sequence[Mapping]) -> list[tuple[Mapping, list[int]]]:
        """(row, response ids) sampled from ``domain``'s teacher; EOS is included when the response ended."""
        teacher, tokenizer = self.frozen.teachers[domain], self.frozen.teacher_tokenizer(domain)
        with unsharded_generation(teacher, self.sharding) as layerwise:
            rollout = generate_rollout(
                teacher,
                tokenizer,
                rows,
                self.sampling,
                self.max_prompt_length,
                self.chat_template_kwargs,
                synced_ranks=layerwise,
            )
        return [
            (row, ids[mask].tolist())
            for row, ids, mask in zip(rollout.rows, rollout.response_ids, rollout.response_mask, strict=True)
        ]


def responses_rollout(
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping],
    responses: Sequence[Sequence[int]],
    max_prompt_length: int | None = None,
    template_kwargs: dict | None = None,
    device: torch.device | str = "cpu",
) -> Rollout:
    """A rollout of given response ids on ``device``: left-padded chat prompts, right-padded responses (all kept)."""
    prompts = encode_prompts(tokenizer, rows, max_prompt_length, template_kwargs)
    width = max(1, max(map(len, responses)))
    response_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=prompts["input_ids"].dtype)
    response_mask = torch.zeros_like(response_ids, dtype=prompts["attention_mask"].dtype)
    for row, ids in enumerate(responses):
        response_ids[row, : len(ids)] = torch.tensor(ids, dtype=response_ids.dtype)
        response_mask[row, : len(ids)] = 1
    return Rollout(
        torch.cat([prompts["input_ids"], response_ids], dim=1).to(device),
        torch.cat([prompts["attention_mask"], response_mask], dim=1).to(device),
        prompts["input_ids"].shape[1],
        list(rows),
        eos_token_ids=(tokenizer.eos_token_id,),
    )


def read_responses(path: str | Path) -> dict[str, str]:
    """Stored responses by row id from a .jsonl file of objects with ``id`` and ``response``."""
    stored = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("response"), str) or "id" not in record:
                raise ValueError(f"{path}:{number}: a stored response needs an 'id' and a string 'response'")
            stored[str(record["id"])] = record["response"]
    return stored
