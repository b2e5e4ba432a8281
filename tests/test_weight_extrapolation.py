"""ExPO weight extrapolation: exact weights, loadable output, Lightning checkpoints, clear errors."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from gopd_lightning import DataSource, GOPDModule, PromptDataModule, SamplingConfig
from gopd_lightning.cli import main
from gopd_lightning.toy.tokenizer import build_tokenizer
from gopd_lightning.weight_extrapolation import expo, extrapolate_weights, load_model
from helpers import make_trainer, save_tiny_model


def weights(path: str | Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()


@pytest.mark.parametrize("alpha", [0.5, 2.0, -0.25])
def test_weights_follow_the_formula_exactly(tiny_models: dict[str, str], tmp_path: Path, alpha: float) -> None:
    theta_0, theta_1 = weights(tiny_models["reference"]), weights(tiny_models["student"])
    out = expo(tiny_models["reference"], tiny_models["student"], alpha, tmp_path / "expo")
    merged = weights(out)
    assert merged.keys() == theta_1.keys()
    for key, after in theta_1.items():
        assert torch.equal(merged[key], after + alpha * (after - theta_0[key])), key
    assert not torch.equal(merged["lm_head.weight"], theta_1["lm_head.weight"])


def test_alpha_zero_gives_theta_1_and_the_output_round_trips(tiny_models: dict[str, str], tmp_path: Path) -> None:
    out = expo(tiny_models["reference"], tiny_models["student"], 0.0, tmp_path / "same")
    theta_1 = weights(tiny_models["student"])
    assert all(torch.equal(value, theta_1[key]) for key, value in weights(out).items())
    model, tokenizer = load_model(str(out))  # loads as any model (and tokenizer) of a config would
    assert tokenizer.get_vocab() == build_tokenizer().get_vocab()
    assert model(torch.tensor([[5, 6, 7]])).logits.shape[-1] == model.config.vocab_size


def test_a_lightning_checkpoint_is_read_as_its_student(tiny_models: dict[str, str], tmp_path: Path) -> None:
    module = GOPDModule(
        student=tiny_models["student"],
        teachers={"math": tiny_models["teacher"]},
        sampling=SamplingConfig(max_new_tokens=4),
        max_prompt_length=64,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
    )
    trainer = make_trainer(steps=1)
    pl.seed_everything(0)
    trainer.fit(module, datamodule=PromptDataModule(train=[DataSource("toy:math", limit=4)], batch_size=4))
    checkpoint = tmp_path / "last.ckpt"
    trainer.save_checkpoint(checkpoint)

    trained, _ = load_model(str(checkpoint))
    assert all(torch.equal(p, q) for p, q in zip(trained.parameters(), module.student.parameters(), strict=True))
    out = expo(tiny_models["student"], str(checkpoint), 1.0, tmp_path / "expo")
    theta_0, theta_1 = weights(tiny_models["student"]), trained.state_dict()
    merged = weights(out)
    assert any(not torch.equal(theta_0[key], theta_1[key]) for key in theta_1)  # training moved the student
    for key, after in theta_1.items():
        assert torch.equal(merged[key], after + 1.0 * (after - theta_0[key])), key


def test_mismatched_models_are_refused(tiny_models: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        expo(tiny_models["student"], tiny_models["teacher_llama"], 0.5, tmp_path / "a")
    padded = save_tiny_model(tmp_path / "padded", seed=0, vocab_size=len(build_tokenizer()) + 8)
    with pytest.raises(ValueError, match=r"weight 'model.embed_tokens.weight' has shape \(\d+, 32\) in theta_0"):
        expo(padded, tiny_models["student"], 0.5, tmp_path / "b")
    with pytest.raises(ValueError, match="different architectures"):
        extrapolate_weights({"a": torch.zeros(1)}, {"b": torch.zeros(1)}, 0.5)


def test_gopd_expo_command(tiny_models: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    main(["expo", tiny_models["reference"], tiny_models["student"], "--alpha", "0.5", "--output", str(out)])
    assert f"written to {out}" in capsys.readouterr().out
    theta_0, theta_1 = weights(tiny_models["reference"]), weights(tiny_models["student"])
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(weights(out)[key], theta_1[key] + 0.5 * (theta_1[key] - theta_0[key]))
