"""GRPO: group-normalised advantages, and one training step through a real Trainer."""

from __future__ import annotations

import pytest
import torch

from gopd_lightning import DataSource, PromptDataModule, SamplingConfig, UpdateConfig
from gopd_lightning.grpo import GRPOModule
from gopd_lightning.objective import group_normalized_advantages
from helpers import make_trainer


def test_group_normalisation_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    advantages = group_normalized_advantages(rewards, group_size=4)
    # group 1: mean 0.5, std 0.5 -> +-1; group 2: all equal -> 0; group 3: mean 0.25, std sqrt(3)/4
    assert torch.allclose(advantages[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)
    assert torch.all(advantages[4:8] == 0)
    s = 3**0.5 / 4
    assert torch.allclose(advantages[8:], torch.tensor([-0.25 / s, -0.25 / s, -0.25 / s, 0.75 / s]), atol=1e-5)
    with pytest.raises(ValueError, match="do not split into groups of 5"):
        group_normalized_advantages(rewards, group_size=5)


def test_group_size_one_is_rejected(tiny_models: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        GRPOModule(tiny_models["student"], sampling=SamplingConfig(samples_per_prompt=1))


def test_training_step_uses_group_normalised_verifier_rewards(tiny_models: dict[str, str]) -> None:
    module = GRPOModule(
        tiny_models["student"],
        sampling=SamplingConfig(max_new_tokens=6, samples_per_prompt=4),
        update=UpdateConfig(updates_per_rollout=2),
        max_prompt_length=64,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    )
    seen = {}
    accuracy, update_policy = module.accuracy, module.update_policy

    def spy_accuracy(rollout):
        seen["rewards"] = accuracy(rollout)
        # a random tiny model never answers right: fake a spread of rewards to normalise
        seen["rewards"] = torch.arange(len(rollout.rows), dtype=torch.float32) % 3
        return seen["rewards"]

    def spy_update_policy(rollout, advantages):
        result = update_policy(rollout, advantages)
        seen["advantages"], seen["mask"] = result.per_token["advantage"], rollout.response_mask
        return result

    module.accuracy, module.update_policy = spy_accuracy, spy_update_policy
    data = PromptDataModule(train=[DataSource("toy:math", limit=8)], batch_size=4)
    trainer = make_trainer(steps=2)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2  # one rollout, two PPO updates
    expected = group_normalized_advantages(seen["rewards"], 4)
    for row in range(len(expected)):  # every token of a response carries its sequence's advantage
        assert torch.allclose(seen["advantages"][row], expected[row].expand_as(seen["advantages"][row]))
    assert "train/reward" in trainer.callback_metrics and "train/uniform_groups" in trainer.callback_metrics


def test_rows_without_answers_are_rejected(tiny_models: dict[str, str], tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(
        '{"id": "x", "domain": "math", "prompt": [{"role": "user", "content": "hi"}], "ground_truth": ""}\n'
    )
    module = GRPOModule(tiny_models["student"], sampling=SamplingConfig(max_new_tokens=4, samples_per_prompt=2))
    trainer = make_trainer(steps=1)
    with pytest.raises(ValueError, match=r"GRPO needs rows with a ground_truth.*\['x'\]"):
        trainer.fit(module, datamodule=PromptDataModule(train=[DataSource(str(path))], batch_size=1))
