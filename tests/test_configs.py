"""Every shipped config parses and instantiates (no model weights are loaded for that)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gopd_lightning import GOPDModule, PromptDataModule
from gopd_lightning.cli import build_cli

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))


def test_configs_exist() -> None:
    assert {p.name for p in CONFIGS} >= {"opd.yaml", "exopd.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_parses_and_instantiates(path: Path, tmp_path: Path) -> None:
    cli = build_cli(["-c", str(path), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(cli.model, GOPDModule) and isinstance(cli.datamodule, PromptDataModule)
    assert cli.model.teachers is None  # models are built in configure_model, not at parse time
    assert all(Path(logger.log_dir) == tmp_path for logger in cli.trainer.loggers)


def test_lambda_of_the_toy_configs() -> None:
    root = Path(__file__).parents[1] / "configs" / "toy"
    assert build_cli(["-c", str(root / "opd.yaml")], run=False).model.lam == 1.0
    assert build_cli(["-c", str(root / "exopd.yaml")], run=False).model.lam == 1.25
