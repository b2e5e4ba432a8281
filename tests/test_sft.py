"""The SFT baseline: exact cross-entropy updates on teacher-written or stored responses."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from gopd_lightning import DataSource, PromptDataModule, SamplingConfig, UpdateConfig
from gopd_lightning.cli import build_cli
from gopd_lightning.objective import aggregate
from gopd_lightning.rollout import generate_rollout
from gopd_lightning.scoring import response_logprobs
from gopd_lightning.sft import SFTModule, read_responses, responses_rollout
from gopd_lightning.toy.tasks import problems, toy_rows
from helpers import CONFIGS, config_args, experiment_files, make_trainer, spy_on_losses


def make_sft(models: dict[str, str], **overrides) -> SFTModule:
    kwargs = dict(
        student=models["student"],
        teachers={"math": models["teacher"]},
        sampling=SamplingConfig(max_new_tokens=6),
        eval_sampling=SamplingConfig(max_new_tokens=6),
        max_prompt_length=64,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        update=UpdateConfig(aggregation="token-mean", max_grad_norm=None),
    )
    kwargs.update(overrides)
    return SFTModule(**kwargs)


def gold_rows(n: int) -> list[dict]:
    """Toy math rows that carry their gold solution as the stored response."""
    rows = toy_rows("math", n, seed=5)
    solutions = [p.solution for p in problems("math", n, 5, "train")]
    return [{**row, "response": solution} for row, solution in zip(rows, solutions, strict=True)]


def test_responses_rollout_layout(tiny_models: dict[str, str]) -> None:
    module = make_sft(tiny_models)
    module.configure_model()
    tokenizer = module.tokenizer
    rows = toy_rows("math", 2)
    rows[1]["prompt"][0]["content"] = "What is 1000+2000 really?"  # a longer prompt: the other is left-padded
    responses = [[10, 11, 12, tokenizer.eos_token_id], [13, tokenizer.eos_token_id]]
    rollout = responses_rollout(tokenizer, rows, responses)
    assert rollout.response_ids[0].tolist() == responses[0]
    assert rollout.response_ids[1, :2].tolist() == responses[1]
    assert rollout.response_mask.tolist() == [[True] * 4, [True, True, False, False]]
    prompt_mask = rollout.attention_mask[:, : rollout.prompt_length]
    assert prompt_mask[1].all() and not prompt_mask[0].all() and prompt_mask[0, -1]  # left padding
    text = tokenizer.decode(rollout.input_ids[0, : rollout.prompt_length][prompt_mask[0].bool()])
    assert text.endswith("<|im_start|>assistant\n")


def test_one_step_is_exactly_a_cross_entropy_gradient_step(tiny_models: dict[str, str]) -> None:
    rows = gold_rows(4)
    module = make_sft(tiny_models)
    module.configure_model()
    rollout = module.imitation_rollout(rows)
    expected = copy.deepcopy(module.student)
    logp, _, _ = response_logprobs(expected, rollout.input_ids, rollout.attention_mask, rollout.response_ids.shape[1])
    cross_entropy = -aggregate(logp, rollout.response_mask, "token-mean")
    cross_entropy.backward()
    with torch.no_grad():
        for p in expected.parameters():
            p -= 0.5 * p.grad

    class Rows(PromptDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(rows, batch_size=len(rows), collate_fn=list)

    trainer = make_trainer(steps=1)
    trainer.fit(module, datamodule=Rows())
    assert torch.isclose(trainer.callback_metrics["train/loss"], cross_entropy.detach(), atol=1e-6)
    assert trainer.callback_metrics["train/accuracy"] == 1.0  # the stored gold responses are right
    assert trainer.callback_metrics["train/response_length"] == rollout.response_lengths.float().mean()
    for (name, p), q in zip(module.student.named_parameters(), expected.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


def test_teacher_writes_the_responses_of_rows_without_one(tiny_models: dict[str, str]) -> None:
    module = make_sft(
        tiny_models,
        teachers={"math": tiny_models["teacher"], "code": tiny_models["teacher_llama"]},
        sampling=SamplingConfig(temperature=0, max_new_tokens=6),
    )
    module.configure_model()
    stored, math, code = gold_rows(2), toy_rows("math", 2, seed=7), toy_rows("code", 1)
    rollout = module.imitation_rollout([math[0], *stored, code[0], math[1]])
    assert [row["id"] for row in rollout.rows] == [
        row["id"] for row in [*stored, *code, *math]
    ]  # stored, then by domain
    for domain, written, first in (("code", code, 2), ("math", math, 3)):
        greedy = generate_rollout(module.frozen.teachers[domain], module.tokenizer, written, module.sampling)
        ours = rollout.select(slice(first, first + len(written)))
        for own, mask, theirs, their_mask in zip(
            ours.response_ids, ours.response_mask, greedy.response_ids, greedy.response_mask, strict=True
        ):
            assert own[mask].tolist() == theirs[their_mask].tolist()
    gold = module.tokenizer(stored[0]["response"], add_special_tokens=False)["input_ids"]
    assert rollout.response_ids[0, : len(gold) + 1].tolist() == [*gold, module.tokenizer.eos_token_id]


def test_teachers_stay_frozen_and_out_of_checkpoints_and_optimiser(tiny_models: dict[str, str]) -> None:
    module = make_sft(tiny_models)
    data = PromptDataModule(train=[DataSource("toy:math", limit=8)], batch_size=4)
    module.configure_model()
    teacher_before = [p.clone() for p in module.frozen.teachers["math"].parameters()]
    trainer = make_trainer(steps=2)
    trainer.fit(module, datamodule=data)
    assert all(
        torch.equal(p, q) for p, q in zip(module.frozen.teachers["math"].parameters(), teacher_before, strict=True)
    )
    assert not module.frozen.teachers["math"].training
    assert all(key.startswith("student.") for key in module.state_dict())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.student.parameters()}
    module.load_state_dict(module.state_dict())  # missing teacher keys are fine on load


def test_stored_responses_from_a_file_need_no_teacher(tiny_models: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in gold_rows(8)))
    assert read_responses(path)[gold_rows(1)[0]["id"]] == gold_rows(1)[0]["response"]
    module = make_sft(tiny_models, teachers=None, responses=str(path))
    trainer = make_trainer(steps=2)
    trainer.fit(module, datamodule=PromptDataModule(train=[DataSource(str(path))], batch_size=4))
    assert module.frozen.teachers is not None and not len(module.frozen.teachers)
    assert trainer.callback_metrics["train/accuracy"] == 1.0


def test_errors_name_the_problem(tiny_models: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SFT needs responses to imitate"):
        make_sft(tiny_models, teachers=None)
    module = make_sft(tiny_models)
    module.configure_model()
    with pytest.raises(ValueError, match=r"rows of domain\(s\) \['code'\] have no stored response and no teacher"):
        module.imitation_rollout(toy_rows("code", 1))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "response": "ok"}\n{"id": "2"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: a stored response needs an 'id' and a string 'response'"):
        read_responses(bad)


def test_toy_config_builds_an_sft_module(tmp_path: Path) -> None:
    cli = build_cli(
        [*config_args(experiment_files(CONFIGS / "toy" / "sft.yaml")), f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )
    assert isinstance(cli.model, SFTModule) and not len(cli.model.frozen.teachers)  # built in configure_model
    assert cli.model.hparams.teachers == {"math": "toy:teacher-math"}
    assert cli.model.hparams.student == "toy:base"
    assert cli.model.update.aggregation == "token-mean"  # SFT's default, also when the CLI passes update=None


def test_several_updates_are_plain_cross_entropy_without_a_ppo_ratio(
    tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_on_losses(monkeypatch)
    rows = gold_rows(4)
    module = make_sft(tiny_models, update=UpdateConfig(aggregation="token-mean", updates_per_rollout=2))

    class Rows(PromptDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(rows, batch_size=len(rows), collate_fn=list)

    make_trainer(steps=2).fit(module, datamodule=Rows())
    assert len(calls) == 2
    assert all(call["old_logp"] is None and call["clip_eps"] is None for call in calls)
