"""Every shipped config parses and instantiates (no model weights are loaded for that), and states only what differs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from gopd_lightning import DataSource, PolicyModule, PromptDataModule
from gopd_lightning.cli import DEFAULTS, build_cli
from helpers import CONFIGS, EXOPD, config_args, experiment_files

PIECES = [CONFIGS / "toy.yaml", CONFIGS / "paper.yaml"]  # what an experiment of their folder composes over
EXPERIMENTS = sorted((CONFIGS / "toy").glob("*.yaml")) + sorted((CONFIGS / "paper").glob("*.yaml"))
ADD_ONS = sorted((CONFIGS / "eval").glob("*.yaml")) + sorted((CONFIGS / "strategy").glob("*.yaml"))  # -c after one
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1"]  # paper configs name 8 GPUs; parse them on the CPU


def args_of(path: Path) -> list[str]:
    return config_args(experiment_files(path)) if path in EXPERIMENTS else [*EXOPD, "-c", str(path)]


def test_configs_exist() -> None:
    assert {p.name for p in EXPERIMENTS} >= {"opd.yaml", "exopd.yaml"}
    assert sorted(CONFIGS.rglob("*.yaml")) == sorted([*PIECES, *EXPERIMENTS, *ADD_ONS])  # none left untested


@pytest.mark.parametrize("path", [*PIECES, *EXPERIMENTS, *ADD_ONS], ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses_and_instantiates(path: Path, tmp_path: Path) -> None:
    configs = ["-c", str(path)] if path in PIECES else args_of(path)
    cli = build_cli([*configs, *CPU, f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(cli.model, PolicyModule) and isinstance(cli.datamodule, PromptDataModule)
    assert cli.model.student is None  # models are built in configure_model, not at parse time
    assert all(Path(logger.log_dir) == tmp_path for logger in cli.trainer.loggers)
    # the DataModule filters prompts with the student's tokenizer and the model's limit
    assert cli.datamodule.tokenizer == cli.model.hparams.student
    assert cli.datamodule.max_prompt_length == cli.model.hparams.max_prompt_length


def test_lambda_of_the_toy_configs() -> None:
    opd = config_args(experiment_files(CONFIGS / "toy" / "opd.yaml"))
    assert build_cli(opd, run=False).model.lam == 1.0
    assert build_cli(EXOPD, run=False).model.lam == 1.25


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_an_experiment_states_only_what_differs(path: Path) -> None:
    """Seed, loggers and callbacks live in the package's defaults.yaml, the rest in the folder's piece."""
    shared = yaml.safe_load(DEFAULTS.read_text())
    config = yaml.safe_load(path.read_text())
    assert not set(shared) - {"trainer"} & set(config)
    assert not {"logger", "callbacks", "log_every_n_steps"} & set(config.get("trainer", {}))
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 20, f"{path.name} has {len(lines)} lines of settings: move what it shares into the piece"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_an_experiments_data_lists_replace_the_pieces(path: Path) -> None:
    """jsonargparse merges a later list of the same length item by item: no key of the piece's items may leak in."""
    given = yaml.safe_load(path.read_text()).get("data", {})
    data = build_cli([*config_args(experiment_files(path)), *CPU], run=False).config.data
    for split in ("train", "val", "test"):
        if split in given:
            composed = [source.as_dict() for source in data[split]]
            assert composed == [dataclasses.asdict(DataSource(**item)) for item in given[split]], split


def test_every_run_starts_from_the_shared_defaults(tmp_path: Path) -> None:
    cli = build_cli([*EXOPD, f"--trainer.default_root_dir={tmp_path}"], run=False)
    expected = {"RunCheckpoint", "LearningRateMonitor", "BenchmarkAccuracy", "StepStatistics"}
    assert expected <= {type(c).__name__ for c in cli.trainer.callbacks}
    assert sorted(type(logger).__name__ for logger in cli.trainer.loggers) == ["CSVLogger", "TensorBoardLogger"]
    assert cli.config.seed_everything == 0 and cli.trainer.log_every_n_steps == 1
