"""``--ckpt_path`` keeps its word: the command line wins over the checkpoint, and an extended run trains on
the data an uninterrupted run would have seen, starting from the checkpoint's own validation."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from gopd_lightning.cli import same_class
from helpers import EXOPD, gopd

GREEDY_EVAL = [
    '--data.val=[{path: "toy:math", split: val, limit: 4}]',
    "--model.eval_sampling.temperature=0",
    "--model.eval_sampling.max_new_tokens=6",
    "--model.eval_samples={math: 2}",
    "--model.eval_pass_k=[1, 2]",
]


def tiny_fit(run: Path, models: dict[str, str], *overrides: str) -> str:
    """``gopd fit`` of the toy ExOPD config on tiny models: 4 prompts a step, sampling at temperature 1."""
    return gopd(
        "fit",
        *EXOPD,
        f"--trainer.default_root_dir={run}",
        "--trainer.enable_progress_bar=false",
        "--trainer.val_check_interval=2",
        f"--model.student={models['student']}",
        f'--model.teachers={{"math": "{models["teacher"]}"}}',
        "--model.sampling.max_new_tokens=6",
        '--data.train=[{path: "toy:math", limit: 64}]',
        "--data.test=null",
        "--data.batch_size=4",
        *GREEDY_EVAL,
        *overrides,
        cwd=run.parent,
    )


def metrics(run: Path, key: str) -> list[tuple[int, float]]:
    rows = csv.DictReader((run / "metrics.csv").open())
    return [(int(row["step"]), float(row[key])) for row in rows if row.get(key)]


@pytest.mark.slow
def test_extending_a_finished_run_continues_its_data_and_validates_the_checkpoint(
    tiny_models: dict[str, str], tmp_path: Path
) -> None:
    straight = tmp_path / "straight"
    tiny_fit(straight, tiny_models, "--trainer.max_steps=4")
    short = tmp_path / "short"
    tiny_fit(short, tiny_models, "--trainer.max_steps=2")
    extended = tmp_path / "extended"
    out = tiny_fit(extended, tiny_models, "--trainer.max_steps=4", f"--ckpt_path={short / 'checkpoints' / 'last.ckpt'}")
    assert "Validating the checkpoint" in out
    # steps 3 and 4 of the uninterrupted run, in order (Lightning's own step label of a run extended past
    # its end is one higher: it counted the end of training as the end of an epoch)
    continued = [loss for _, loss in metrics(extended, "train/loss")]
    assert continued == pytest.approx([loss for _, loss in metrics(straight, "train/loss")][2:], abs=1e-5)
    # the validation before the extension scores the checkpoint: the short run's last validation
    for key in ("val/response_length", "val/accuracy"):
        assert metrics(extended, key)[0][1] == pytest.approx(metrics(short, key)[-1][1]), key


@pytest.mark.slow
def test_the_command_line_and_later_configs_win_over_the_checkpoint(
    tiny_models: dict[str, str], tmp_path: Path
) -> None:
    first = tmp_path / "first"
    tiny_fit(first, tiny_models, "--trainer.max_steps=2", "--validate_before_fit=false")
    last = first / "checkpoints" / "last.ckpt"

    resumed = tmp_path / "resumed"
    out = tiny_fit(
        resumed,
        tiny_models,
        "--trainer.max_steps=3",
        "--validate_before_fit=false",
        f"--ckpt_path={last}",
        "--model.lam=1.5",
    )
    assert "model.lam: 1.25 in the checkpoint -> 1.5 now" in out
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)["hyper_parameters"]["lam"] == 1.5

    evaluation = tmp_path / "eval.yaml"  # a later config, as configs/eval/paper.yaml is
    evaluation.write_text("model:\n  init_args:\n    eval_samples: {math: 3}\n    eval_pass_k: [1, 3]\n")
    tested = tmp_path / "tested"
    gopd(
        "test",
        *EXOPD,
        "-c",
        str(evaluation),
        f"--trainer.default_root_dir={tested}",
        f"--model.student={tiny_models['student']}",
        f'--model.teachers={{"math": "{tiny_models["teacher"]}"}}',
        '--data.test=[{path: "toy:math", split: val, limit: 4}]',
        f"--ckpt_path={last}",
        cwd=tmp_path,
    )
    table = (tested / "results-test.md").read_text()
    assert "pass@3" in table and "pass@2" not in table


def test_a_checkpoint_matches_its_method_however_the_class_path_is_spelled() -> None:
    assert same_class("gopd_lightning.GOPDModule", "gopd_lightning.distillation.GOPDModule")
    assert same_class("gopd_lightning.sft.SFTModule", "gopd_lightning.SFTModule")  # configs before the pieces
    assert same_class("gopd_lightning.module.GOPDModule", "gopd_lightning.GOPDModule")  # a module since renamed
    assert not same_class("gopd_lightning.GOPDModule", "gopd_lightning.SFTModule")
