"""A training step computes what the paper says, checked against values computed here by hand.

The rollout a step samples is captured, then the student's, teacher's and reference's logits are
computed directly (full logits, no chunking, no module code) to rebuild the advantages, the loss,
the importance weights and every logged statistic.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file, save_file

from gopd_lightning import SamplingConfig, UpdateConfig
from gopd_lightning.callbacks import RunCheckpoint
from gopd_lightning.checkpointing import AtomicCheckpointIO, NonFiniteError
from gopd_lightning.objective import aggregate
from gopd_lightning.rollout import generate_rollout, sampler_logits
from gopd_lightning.toy.tasks import toy_rows
from helpers import (
    full_logits,
    make_data,
    make_module,
    make_trainer,
    run_one_step,
    save_tiny_model,
    spy_on_losses,
    token_logp,
)

LAM = 1.25


@pytest.mark.parametrize(
    "sampling",
    [SamplingConfig(max_new_tokens=6), SamplingConfig(max_new_tokens=6, temperature=0.6, top_p=0.9)],
    ids=["pi_theta", "temperature-top_p"],
)
def test_logged_statistics_and_loss_equal_the_hand_computed_ones(
    tiny_models: dict[str, str], sampling: SamplingConfig
) -> None:
    module = make_module(tiny_models, lam=LAM, sampling=sampling)
    trainer, student, rollout = run_one_step(module)
    tokenizer, mask, tokens = module.tokenizer, rollout.response_mask, rollout.response_ids
    student_logits = full_logits(student, tokenizer, rollout)
    s = token_logp(student_logits, tokens)
    t = token_logp(full_logits(module.frozen.teachers["math"], tokenizer, rollout), tokens)
    r = s  # the reference is the initial student
    advantage = LAM * (t - r) - (s - r)
    probs = torch.softmax(student_logits, -1)
    entropy = -(probs * torch.log_softmax(student_logits, -1)).sum(-1)
    ended = torch.tensor([tokenizer.eos_token_id in row[m].tolist() for row, m in zip(tokens, mask, strict=True)])
    weight = torch.ones_like(s)
    if not sampling.samples_the_model:  # truncated importance weight against the sampler
        weight = torch.exp(s - token_logp(sampler_logits(student_logits, sampling), tokens)).clamp(max=5.0)
        assert not torch.allclose(weight[mask], torch.ones_like(weight[mask]))

    def token_mean(values: torch.Tensor) -> float:
        return float(values[mask].mean())

    expected = {
        "train/reverse_kl": token_mean(s - t),
        "train/entropy": token_mean(entropy),
        "train/advantage": token_mean(advantage),
        "train/truncated": float((~ended).float().mean()),
        "train/response_length": float(mask.sum(-1).float().mean()),
        "train/response_length_max": float(mask.sum(-1).max()),
        "train/loss": float(-aggregate(weight * advantage, mask, "seq-mean-token-mean")),
    }
    logged = {key: float(trainer.callback_metrics[key]) for key in expected}
    assert logged == pytest.approx(expected, abs=1e-4)


def test_another_sampler_than_the_student_is_announced(tiny_models: dict[str, str], caplog) -> None:  # noqa: ANN001
    with caplog.at_level("WARNING", logger="gopd_lightning.policy"):
        make_module(tiny_models, sampling=SamplingConfig(temperature=0.7, top_p=0.95))
    assert "temperature=0.7, top_p=0.95, top_k=0, not the student's own distribution" in caplog.text
    assert "min(pi_theta / pi_sampler, 5)" in caplog.text


def test_several_updates_take_each_mini_batch_and_ratio_to_the_rollout_policy(
    tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_on_losses(monkeypatch)
    module = make_module(tiny_models, update=UpdateConfig(updates_per_rollout=3, clip_eps=0.2))
    trainer, student, rollout = run_one_step(module, max_steps=3)
    assert trainer.global_step == 3 and len(calls) == 3  # 4 rows in 3 updates: 2, 1 and 1 rows
    assert sorted(len(call["logp"]) for call in calls) == [1, 1, 2]
    rollout_logp = token_logp(full_logits(student, module.tokenizer, rollout), rollout.response_ids)
    for call in calls:
        old = call["old_logp"]
        assert old is not None and call["clip_eps"] == 0.2
        rows = [next(i for i in range(len(rollout.rows)) if torch.allclose(o, rollout_logp[i], atol=1e-4)) for o in old]
        assert len(rows) == len(old)  # every old log-prob is the rollout policy's of its row
    moved = (calls[-1]["logp"] - calls[-1]["old_logp"]).abs().max()
    assert moved > 1e-4  # after two updates the ratio is no longer 1: the clip has something to do
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(sum(c["loss"] for c in calls) / 3, abs=1e-6)


def test_more_updates_than_rows_is_an_error(tiny_models: dict[str, str]) -> None:
    module = make_module(tiny_models, update=UpdateConfig(updates_per_rollout=5))
    with pytest.raises(ValueError, match="updates_per_rollout=5 is more than the 4 rows"):
        run_one_step(module)


def test_student_is_scored_with_dropout_off(tiny_models: dict[str, str]) -> None:
    pytest.importorskip("peft")
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.9, "target_modules": ["q_proj", "v_proj"]}
    module = make_module(tiny_models, lora=lora)
    module.configure_model()
    for name, parameter in module.student.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    rollout = generate_rollout(module.student, module.tokenizer, toy_rows("math", 3), module.sampling)
    module.student.train()
    scored = module.student_logprobs(rollout).logp
    assert module.student.training  # the mode is restored
    module.student.eval()
    expected = module.scorer(module.student, rollout).logp
    assert torch.allclose(scored[rollout.response_mask], expected[rollout.response_mask], atol=1e-6)


@pytest.fixture
def nan_teacher(tmp_path: Path) -> str:
    path = save_tiny_model(tmp_path / "nan-teacher", seed=1)
    weights = load_file(Path(path) / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(weights, Path(path) / "model.safetensors", metadata={"format": "pt"})
    return path


def test_a_nan_teacher_stops_the_run_before_the_update_and_keeps_the_checkpoint(
    tiny_models: dict[str, str], nan_teacher: str, tmp_path: Path
) -> None:
    def checkpointing() -> RunCheckpoint:
        return RunCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_exception=True)

    good = make_module(tiny_models)
    pl.seed_everything(0)
    make_trainer(steps=1, enable_checkpointing=True, callbacks=[checkpointing()]).fit(good, datamodule=make_data())
    last = tmp_path / "ckpt" / "last.ckpt"
    saved, files = last.read_bytes(), sorted(last.parent.iterdir())

    broken = make_module(tiny_models, teachers={"math": nan_teacher})
    broken.configure_model()
    before = copy.deepcopy(broken.student.state_dict())
    trainer = make_trainer(steps=2, enable_checkpointing=True, callbacks=[checkpointing()])
    with pytest.raises(NonFiniteError, match=rf"teacher 'math' \({nan_teacher}\).*before the optimiser step"):
        trainer.fit(broken, datamodule=make_data())
    assert all(torch.equal(before[k], v) for k, v in broken.student.state_dict().items())
    assert last.read_bytes() == saved and sorted(last.parent.iterdir()) == files


def test_single_file_checkpoints_are_written_atomically(tiny_models: dict[str, str]) -> None:
    trainer, _, _ = run_one_step(make_module(tiny_models))
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"lam": 0.0}, "lam=0.0"),
        ({"lam": -1.0}, "lam=-1.0"),
        ({"max_prompt_length": 0}, "max_prompt_length=0"),
        ({"logprob_chunk_size": 0}, "logprob_chunk_size=0"),
    ],
)
def test_bad_module_options_fail_at_construction_naming_the_option(
    tiny_models: dict[str, str], options: dict, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        make_module(tiny_models, **options)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"updates_per_rollout": 0}, "updates_per_rollout=0"),
        ({"micro_batch_size": 0}, "micro_batch_size=0"),
        ({"aggregation": "mean"}, "aggregation='mean'"),
        ({"clip_eps": -0.1}, "clip_eps=-0.1"),
    ],
)
def test_bad_update_options_name_the_option(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        UpdateConfig(**options)


def test_evaluation_prompts_are_not_held_to_the_training_limit(tiny_models: dict[str, str]) -> None:
    module = make_module(tiny_models, max_prompt_length=20)
    module.configure_model()
    long = {**toy_rows("math", 1)[0], "prompt": [{"role": "user", "content": "What is 1+2? " * 8}]}
    with pytest.raises(ValueError, match="more than max_prompt_length=20"):
        module.rollout([long], module.sampling)  # training holds to the limit
    module.evaluate("val", [long])  # a benchmark is scored whole
    assert module.scores["val"].compute()["problems"] == 1
