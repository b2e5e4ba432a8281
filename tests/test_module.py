"""GOPDModule through a real Lightning Trainer on tiny random models."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from gopd_lightning import UpdateConfig, policy
from gopd_lightning.rollout import generate_rollout
from gopd_lightning.scoring import response_logprobs
from gopd_lightning.toy.tokenizer import build_tokenizer
from helpers import make_data, make_module, make_trainer, save_tiny_model


def test_fit_trains_only_the_student_and_logs_rollout_statistics(tiny_models: dict[str, str]) -> None:
    module = make_module(tiny_models)
    assert module.student is None  # nothing is built before configure_model
    pl.seed_everything(0)
    trainer = make_trainer()
    trainer.fit(module, datamodule=make_data())
    teacher, reference = module.frozen.teachers["math"], module.frozen.reference
    for frozen in (teacher, reference):
        assert not frozen.training
        assert not any(p.requires_grad for p in frozen.parameters())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.student.parameters()}
    metrics = trainer.callback_metrics
    for key in [
        "loss",
        "advantage",
        "reverse_kl",
        "entropy",
        "response_length",
        "response_length_max",
        "truncated",
        "accuracy",
    ]:
        assert f"train/{key}" in metrics, key
    assert 1 <= metrics["train/response_length"] <= 6
    assert 0 <= metrics["train/truncated"] <= 1


def test_training_answers_are_left_unscored_when_asked(
    tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    scored = []
    monkeypatch.setattr(policy, "score_batch", lambda *args: scored.append(args) or [0.0] * len(args[0]))
    trainer = make_trainer()
    trainer.fit(make_module(tiny_models, train_accuracy=False), datamodule=make_data())
    assert not scored and "train/accuracy" not in trainer.callback_metrics and "train/loss" in trainer.callback_metrics
    trainer = make_trainer()
    trainer.fit(make_module(tiny_models), datamodule=make_data())
    assert scored and "train/accuracy" in trainer.callback_metrics


def test_student_moves_teacher_and_reference_stay(tiny_models: dict[str, str]) -> None:
    module = make_module(tiny_models)
    module.configure_model()
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    pl.seed_everything(0)
    make_trainer(steps=1).fit(module, datamodule=make_data())
    after = dict(module.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("student."))
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith(("teachers.", "reference.")))


def test_reference_is_initial_student_and_skipped_when_lam_is_one(tiny_models: dict[str, str]) -> None:
    module = make_module(tiny_models)
    module.configure_model()
    for (name, p), (_, q) in zip(
        module.student.named_parameters(), module.frozen.reference.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name
    opd = make_module(tiny_models, lam=1.0)
    opd.configure_model()
    assert opd.frozen.reference is None
    explicit = make_module(tiny_models, reference=tiny_models["reference"])
    explicit.configure_model()
    assert not torch.equal(explicit.frozen.reference.lm_head.weight, explicit.student.lm_head.weight)


def test_checkpoint_holds_only_the_student_and_resumes(tiny_models: dict[str, str], tmp_path: Path) -> None:
    module = make_module(tiny_models)
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, steps=2)
    trainer.fit(module, datamodule=make_data())
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["state_dict"] and all(k.startswith("student.") for k in checkpoint["state_dict"])
    assert checkpoint["global_step"] == 2

    resumed = make_module(tiny_models)
    trainer = make_trainer(tmp_path, steps=3)
    trainer.fit(resumed, datamodule=make_data(), ckpt_path=path)
    assert trainer.global_step == 3
    # the reference is still the *initial* student, not the trained one
    initial = make_module(tiny_models)
    initial.configure_model()
    assert torch.equal(resumed.frozen.reference.lm_head.weight, initial.student.lm_head.weight)


def test_missing_student_keys_still_fail_loading(tiny_models: dict[str, str]) -> None:
    module = make_module(tiny_models)
    module.configure_model()
    state = module.state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(RuntimeError, match="Missing key"):
        module.load_state_dict(state)


def test_domain_without_teacher_fails_at_setup(tiny_models: dict[str, str]) -> None:
    module = make_module(tiny_models, teachers={"code": tiny_models["teacher"]})
    with pytest.raises(ValueError, match=r"no teacher for domain\(s\) \['math'\]"):
        make_trainer().fit(module, datamodule=make_data())


def test_vocabulary_mismatch_fails_at_setup(tiny_models: dict[str, str], tmp_path: Path) -> None:
    other = build_tokenizer()
    other.add_tokens(["<|extra|>"])
    teacher = save_tiny_model(tmp_path / "other-vocab", seed=5, tokenizer=other)
    module = make_module(tiny_models, teachers={"math": teacher})
    with pytest.raises(ValueError, match="teacher 'math'.*does not share the student's vocabulary"):
        module.configure_model()


def test_lam_other_than_one_without_reference_is_rejected(tiny_models: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="lam=1.25 needs a reference"):
        make_module(tiny_models, reference=None)
    make_module(tiny_models, lam=1.0, reference=None)  # fine: the reference cancels


def test_each_row_is_scored_by_its_domains_teacher(tiny_models: dict[str, str]) -> None:
    module = make_module(tiny_models, teachers={"math": tiny_models["teacher"], "code": tiny_models["teacher_llama"]})
    module.configure_model()
    rows = [
        {"id": str(i), "domain": domain, "prompt": [{"role": "user", "content": f"What is {i}+1?"}], "ground_truth": ""}
        for i, domain in enumerate(["math", "code", "code", "math"])
    ]
    rollout = generate_rollout(module.student, module.tokenizer, rows, module.sampling)
    teacher_logp, ref_logp = module.score_frozen(rollout)
    for domain in ("math", "code"):
        direct, _, _ = response_logprobs(
            module.frozen.teachers[domain], rollout.input_ids, rollout.attention_mask, rollout.response_ids.shape[1]
        )
        rows_of = [i for i, row in enumerate(rows) if row["domain"] == domain]
        mask = rollout.response_mask[rows_of]
        assert torch.allclose(teacher_logp[rows_of][mask], direct[rows_of][mask], atol=1e-5)
    assert ref_logp is not None and ref_logp.shape == teacher_logp.shape


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_micro_batches_give_the_full_batch_update(tiny_models: dict[str, str], aggregation: str) -> None:
    weights = []
    for micro in (None, 3):
        module = make_module(tiny_models, update=UpdateConfig(micro_batch_size=micro, aggregation=aggregation))
        pl.seed_everything(0)
        make_trainer(steps=1).fit(module, datamodule=make_data(batch_size=8))
        weights.append(torch.cat([p.detach().flatten() for p in module.student.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_several_updates_per_rollout_step_the_optimizer_each_time(tiny_models: dict[str, str]) -> None:
    module = make_module(tiny_models, update=UpdateConfig(updates_per_rollout=2, clip_eps=0.2))
    pl.seed_everything(0)
    trainer = make_trainer(steps=4)
    trainer.fit(module, datamodule=make_data())
    assert trainer.global_step == 4  # Lightning counts optimiser steps: 2 rollouts x 2 updates
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_validation_logs_accuracy_and_length(tiny_models: dict[str, str]) -> None:
    module = make_module(tiny_models)
    results = make_trainer(limit_val_batches=None).validate(module, datamodule=make_data(), verbose=False)
    assert 0.0 <= results[0]["val/accuracy"] <= 1.0
    assert 1.0 <= results[0]["val/response_length"] <= 6.0
