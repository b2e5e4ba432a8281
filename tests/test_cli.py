"""``gopd`` end to end on the toy world, in subprocesses as a user runs it."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import EXOPD, gopd

SHORT = [  # the toy config on fewer prompts: validation every 2 steps on 64 problems
    "--trainer.val_check_interval=2",
    '--data.train=[{path: "toy:math", split: train, limit: 1024, seed: 1}]',
    '--data.val=[{path: "toy:math", split: val, limit: 64, seed: 0}]',
    '--data.test=[{path: "toy:math", split: val, limit: 64, seed: 2}]',
]


@pytest.mark.slow
def test_fit_resume_and_test_on_the_toy_world(toy_models: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = gopd("fit", *EXOPD, "--trainer.max_steps=4", f"--trainer.default_root_dir={run}", *SHORT, cwd=tmp_path)
    assert f"Run directory: {run}" in out and "val/accuracy:" in out
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["step"] for r in rows if r.get("val/accuracy")] == ["0", "1", "3"]  # before fit, then every 2
    trained = [r for r in rows if r.get("train/loss")]
    assert len(trained) == 4 and all(r["train/reverse_kl"] and r["train/entropy"] for r in trained)
    assert list(run.glob("events.out.tfevents.*")) and (run / "config.yaml").exists()

    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert all(key.startswith("student.") for key in checkpoint["state_dict"]) and checkpoint["global_step"] == 4

    resumed = tmp_path / "resumed"
    gopd(
        "fit",
        *EXOPD,
        "--trainer.max_steps=6",
        f"--trainer.default_root_dir={resumed}",
        f"--ckpt_path={last}",
        "--validate_before_fit=false",
        *SHORT,
        cwd=tmp_path,
    )
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6

    test_dir = tmp_path / "test"
    tested = gopd("test", *EXOPD, f"--trainer.default_root_dir={test_dir}", f"--ckpt_path={last}", *SHORT, cwd=tmp_path)
    assert "test/accuracy" in tested
    table = (test_dir / "results-test.md").read_text()
    assert "| group | problems | accuracy | pass@1 | pass@4 | response_length |" in table
    assert "| all | 64 |" in table and "domain/math" in table


def run_gopd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gopd_lightning.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_help_lists_every_command_and_no_predict(tmp_path: Path) -> None:
    done = run_gopd("--help", cwd=tmp_path)
    assert done.returncode == 0
    for command in ("fit", "validate", "test", "toy", "export", "expo"):
        assert command in done.stdout, command
    assert "predict" not in done.stdout  # a policy is scored by benchmarks, not by predict


def test_fit_help_shows_the_methods_options_without_warnings_of_our_making(tmp_path: Path) -> None:
    done = run_gopd("fit", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for option in ("--model.lam", "--model.teachers", "--model.reference", "--model.sampling"):
        assert option in done.stdout, option
    assert "--model.help" in done.stdout  # how to see SFTModule's or GRPOModule's options instead
    assert "register_new_resolver" not in done.stderr  # omegaconf's deprecation, once caused by us
    assert "args parameter is intended" not in done.stderr  # LightningCLI's "args and sys.argv" warning


def test_toy_prepare_command(toy_models: dict[str, Path], tmp_path: Path) -> None:
    out = gopd("toy", "prepare", cwd=tmp_path)
    assert "toy world ready" in out and "toy:base" in out and "toy:teacher-math" in out
