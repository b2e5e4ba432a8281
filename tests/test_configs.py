"""Every shipped config parses and instantiates (no model weights are loaded for that)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gopd_lightning import PolicyModule, PromptDataModule
from gopd_lightning.cli import build_cli

ROOT = Path(__file__).parents[1] / "configs"
PIECES = ("eval", "strategy")  # composable pieces: used as `-c experiment.yaml -c piece.yaml`
CONFIGS = sorted(ROOT.rglob("*.yaml"))
EXPERIMENTS = [p for p in CONFIGS if p.relative_to(ROOT).parts[0] not in PIECES]
BASE = ROOT / "toy" / "exopd.yaml"


def test_configs_exist() -> None:
    assert {p.name for p in EXPERIMENTS} >= {"opd.yaml", "exopd.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_parses_and_instantiates(path: Path, tmp_path: Path) -> None:
    configs = ["-c", str(path)] if path in EXPERIMENTS else ["-c", str(BASE), "-c", str(path)]
    # paper configs name 8 GPUs; parse them here on the CPU
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1"]
    cli = build_cli([*configs, *cpu, f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(cli.model, PolicyModule) and isinstance(cli.datamodule, PromptDataModule)
    assert cli.model.student is None  # models are built in configure_model, not at parse time
    assert all(Path(logger.log_dir) == tmp_path for logger in cli.trainer.loggers)
    # the DataModule filters prompts with the student's tokenizer and the model's limit
    assert cli.datamodule.tokenizer == cli.model.hparams.student
    assert cli.datamodule.max_prompt_length == cli.model.hparams.max_prompt_length


def test_lambda_of_the_toy_configs() -> None:
    root = Path(__file__).parents[1] / "configs" / "toy"
    assert build_cli(["-c", str(root / "opd.yaml")], run=False).model.lam == 1.0
    assert build_cli(["-c", str(root / "exopd.yaml")], run=False).model.lam == 1.25


def test_experiments_state_only_what_differs_from_the_shared_defaults() -> None:
    """Seed, loggers and callbacks live in the package's defaults.yaml, under every run's config."""
    import yaml

    from gopd_lightning.cli import DEFAULTS

    shared = yaml.safe_load(DEFAULTS.read_text())
    for path in EXPERIMENTS:
        config = yaml.safe_load(path.read_text())
        assert not set(shared) - {"trainer"} & set(config), path
        assert not {"logger", "callbacks", "log_every_n_steps"} & set(config.get("trainer", {})), path


def test_every_run_starts_from_the_shared_defaults(tmp_path: Path) -> None:
    cli = build_cli(["-c", str(BASE), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert {"RunCheckpoint", "LearningRateMonitor", "ResultsTable"} <= {type(c).__name__ for c in cli.trainer.callbacks}
    assert sorted(type(logger).__name__ for logger in cli.trainer.loggers) == ["CSVLogger", "TensorBoardLogger"]
    assert cli.config.seed_everything == 0 and cli.trainer.log_every_n_steps == 1
