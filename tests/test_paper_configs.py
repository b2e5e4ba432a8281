"""Every paper config runs one training step with its model ids swapped for tiny local models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gopd_lightning.cli import build_cli
from helpers import CONFIGS, config_args, experiment_files

PAPER = sorted((CONFIGS / "paper").glob("*.yaml"))
# every field explicit: a list given on the command line is merged entry by entry into the config's
PLAIN = {"format": "auto", "min_difficulty": None, "domains": None, "name": None, "weight": None, "data_files": None}
CODE_ROW = {
    "id": "code-0",
    "domain": "code",
    "prompt": [{"role": "user", "content": "Write f(x) returning x+1."}],
    "ground_truth": json.dumps({"inputs": [[1]], "outputs": [2], "fn_name": "f"}),
}


RELEASED_TEACHERS = {
    "math": "Keven16/Qwen3-4B-Non-Thinking-RL-Math-Step1200",
    "code": "Keven16/Qwen3-4B-Non-Thinking-RL-Code-Step1200",
}
AUTHORS_DATA = "hf:Keven16/G-OPD-Training-Data"


@pytest.mark.parametrize("path", [p for p in PAPER if not p.stem.startswith("grpo")], ids=lambda p: p.stem)
def test_distillation_configs_use_the_released_teachers_and_training_files(path: Path) -> None:
    """A GPU user reproduces the paper without re-training teachers or rebuilding the data."""
    config = build_cli([*config_args(experiment_files(path)), "--trainer.accelerator=cpu"], run=False).config
    teachers = config.model.init_args.teachers
    assert teachers and {domain: RELEASED_TEACHERS[domain] for domain in teachers} == dict(teachers)
    assert [(s.path, s.format) for s in config.data.train] == [(AUTHORS_DATA, "verl")]
    expected = "math_and_code/train.parquet" if "code" in teachers else "DeepMath-103K/train_filtered_level6.parquet"
    assert config.data.train[0].data_files == expected


def test_the_paper_settings_are_all_there() -> None:
    names = {p.stem for p in PAPER}
    assert {"opd_qwen3_4b_math", "exopd_qwen3_4b_math", "exopd_qwen3_4b_multi_teacher"} <= names
    assert {"exopd_qwen3_1.7b_strong_to_weak", "exopd_qwen3_1.7b_strong_to_weak_rc"} <= names
    assert {"grpo_qwen3_4b_math_teacher", "grpo_qwen3_4b_code_teacher"} <= names
    assert {"sft_qwen3_4b_math", "sft_qwen3_1.7b_strong_to_weak"} <= names


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_config_runs_one_step_on_tiny_models(path: Path, tiny_models: dict[str, str], tmp_path: Path) -> None:
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1"]
    configs = config_args(experiment_files(path))
    published = build_cli([*configs, *cpu], run=False).model.hparams
    assert "Qwen/Qwen3" in published.student  # the real ids stay in the shipped file
    code_rows = tmp_path / "code.jsonl"
    code_rows.write_text(json.dumps(CODE_ROW) + "\n")
    overrides = [
        f"--model.init_args.student={tiny_models['student']}",
        "--model.init_args.sampling.max_new_tokens=6",
        "--model.init_args.max_prompt_length=64",
        "--data.train=" + json.dumps([{"path": "toy:math", "limit": 4, **PLAIN}, {"path": str(code_rows), **PLAIN}]),
        "--data.val=[]",
        "--data.batch_size=2",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.precision=32-true",
        "--trainer.max_steps=1",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--validate_before_fit=false",
    ]
    if "teachers" in published:
        overrides.append(
            "--model.init_args.teachers=" + json.dumps({d: tiny_models["teacher"] for d in published.teachers})
        )
        if "code" not in published.teachers:
            overrides[3] = "--data.train=" + json.dumps([{"path": "toy:math", "limit": 4, **PLAIN}])
    if published.get("reference") not in (None, "initial"):
        overrides.append(f"--model.init_args.reference={tiny_models['reference']}")
    cli = build_cli([*configs, *overrides], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step >= 1
    assert "train/loss" in cli.trainer.callback_metrics
