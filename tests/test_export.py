"""``gopd export``: a trained student, written in Hugging Face format, loads unchanged with ``from_pretrained``.

A distributed (FSDP2) checkpoint is exported in ``test_distributed.py``, where such runs are made.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gopd_lightning import GOPDModule
from gopd_lightning.cli import main
from helpers import EXOPD_FILES, make_data, make_module, make_trainer


@pytest.fixture(scope="module")
def trained(tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GOPDModule]:
    """A checkpoint file after one training step on tiny models, and the module that wrote it."""
    module = make_module(tiny_models)
    trainer = make_trainer(steps=1)
    trainer.fit(module, datamodule=make_data())
    path = tmp_path_factory.mktemp("export") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path, module


def test_export_round_trip(trained: tuple[Path, GOPDModule], tiny_models: dict[str, str], tmp_path: Path) -> None:
    path, module = trained
    main(["export", str(path), "--output", str(tmp_path)])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path)
    weights, initial = module.student.state_dict(), AutoModelForCausalLM.from_pretrained(tiny_models["student"])
    assert exported.state_dict().keys() == weights.keys()
    assert all(torch.equal(exported.state_dict()[key], weights[key]) for key in weights)
    assert not all(torch.equal(initial.state_dict()[key], weights[key]) for key in weights)  # it was trained
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == module.tokenizer.get_vocab()
    assert exported.generation_config.eos_token_id == module.tokenizer.eos_token_id
    assert exported.generation_config.pad_token_id == module.tokenizer.pad_token_id


def test_export_in_bf16_with_the_experiment_configs(
    trained: tuple[Path, GOPDModule], tiny_models: dict[str, str], tmp_path: Path
) -> None:
    path, module = trained
    config = tmp_path / "tiny.yaml"  # as a run moved to another machine would name its models
    config.write_text(f"model:\n  student: {tiny_models['student']}\n  teachers: {{math: {tiny_models['teacher']}}}\n")
    out = tmp_path / "out"
    main(["export", str(path), "--config", *EXOPD_FILES, str(config), "--output", str(out), "--dtype", "bfloat16"])
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert exported.dtype == torch.bfloat16
    weights = module.student.state_dict()
    assert all(torch.equal(exported.state_dict()[key], weights[key].bfloat16()) for key in weights)
