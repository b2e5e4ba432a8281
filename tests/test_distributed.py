"""G-OPD on Lightning's strategies, in 2 CPU processes (gloo), each run a ``gopd fit`` subprocess.

The toy config on tiny random models (the student's embeddings tied to its head, as in Qwen3-4B)
and the same global batch: 4 prompts per step, as 1 process x 4 or 2 processes x 2 (the training
order does not depend on the number of processes), greedy rollouts and fp32. DDP's and FSDP2's
averaged gradients then equal the single process's (the paper's seq-mean aggregation): losses and
trained weights agree within ``TOLERANCE`` (float rounding of a different reduction order; about
1e-7 measured). A resumed run, sampling at temperature 1, continues the interrupted one exactly.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoConfig, AutoModelForCausalLM

from gopd_lightning.export import load_student
from gopd_lightning.rollout import SamplingConfig, generate_rollout
from gopd_lightning.scoring import response_logprobs
from gopd_lightning.sharding import ShardingConfig, decoder_layers, parallelize
from helpers import EXOPD, ROOT, gopd, save_tiny_model

STRATEGIES = ROOT / "configs" / "strategy"
TOLERANCE = 1e-5
FP32 = ["--trainer.precision=32-true", "--model.frozen_dtype=float32", "--model.sharding.param_dtype=float32"]
SETUPS = {  # strategy piece, processes, prompts per process
    "single": ("cpu", 1, 4),
    "ddp": ("ddp", 2, 2),
    "fsdp": ("fsdp", 2, 2),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny student whose output head is tied to its embeddings, and a tiny teacher."""
    root = tmp_path_factory.mktemp("distributed-models")
    student = save_tiny_model(root / "student", seed=0)
    config = AutoConfig.from_pretrained(student)
    config.tie_word_embeddings = True
    AutoModelForCausalLM.from_pretrained(student, config=config).save_pretrained(student)
    return {
        "student": student,
        "teacher": save_tiny_model(root / "teacher", seed=1),
        "teacher_code": save_tiny_model(root / "teacher-code", seed=2, arch="llama"),  # another shape
    }


def fit(run: Path, setup: str, models: dict[str, str], *overrides: str) -> Path:
    """``gopd fit`` of the toy config on ``models`` in ``setup`` (see SETUPS); returns the run directory."""
    piece, processes, prompts = SETUPS[setup]
    gopd(
        "fit",
        *EXOPD,
        "-c",
        str(STRATEGIES / f"{piece}.yaml"),
        "--trainer.accelerator=cpu",
        f"--trainer.devices={processes}",
        f"--trainer.default_root_dir={run}",
        "--trainer.max_steps=3",
        "--trainer.enable_progress_bar=false",
        "--validate_before_fit=false",
        f"--model.student={models['student']}",
        f'--model.teachers={{"math": "{models["teacher"]}"}}',
        "--model.sampling.max_new_tokens=8",
        '--data.train=[{path: "toy:math", limit: 64}]',
        "--data.val=null",
        "--data.test=null",
        f"--data.batch_size={prompts}",
        *FP32,
        *overrides,
        cwd=run.parent,
    )
    return run


def assert_same_student(a: Path, b: Path) -> None:
    """The students of two checkpoints (files or distributed folders) agree within TOLERANCE."""
    first, second = (load_student(path).student.state_dict() for path in (a, b))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=TOLERANCE, rtol=0, msg=key)


GREEDY_VALIDATION = [  # validation before fit on 7 problems, 2 a batch: 4 and 3 on 2 processes
    "--validate_before_fit=true",
    '--data.val=[{path: "toy:math", split: val, limit: 7}]',
    "--data.eval_batch_size=2",
    "--model.eval_sampling.temperature=0",
    "--model.eval_samples={math: 2}",
    "--model.eval_pass_k=[1, 2]",
]


@pytest.fixture(scope="module")
def runs(models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Greedy validation, then 3 greedy steps of the same data: one process, DDP and FSDP2 on 2 processes."""
    root = tmp_path_factory.mktemp("runs")
    return {
        setup: fit(root / setup, setup, models, "--model.sampling.temperature=0", *GREEDY_VALIDATION)
        for setup in SETUPS
    }


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["ddp", "fsdp"])
def test_validation_across_processes_reports_what_one_process_does(runs: dict[str, Path], setup: str) -> None:
    single, distributed = (json.loads((runs[s] / "results-val.json").read_text()) for s in ("single", setup))
    assert single["results"]["all"]["problems"] == distributed["results"]["all"]["problems"] == 7  # each once
    assert single["results"]["all"]["response_length"] > 0
    assert distributed["results"].keys() == single["results"].keys()
    for group, row in single["results"].items():
        assert distributed["results"][group] == pytest.approx(row), group


ROLLOUT_STATISTICS = [
    "train/reverse_kl",
    "train/entropy",
    "train/advantage",
    "train/response_length",
    "train/response_length_max",
    "train/truncated",
]


def logged(run: Path, key: str) -> dict[int, float]:
    rows = csv.DictReader((run / "metrics.csv").open())
    return {int(row["step"]): float(row[key]) for row in rows if row.get(key)}


def assert_same_training(single: Path, distributed: Path, keys: list[str]) -> None:
    """Losses, rollout statistics (over all ranks, not rank 0's) and trained students agree."""
    for key in ["train/loss", *keys]:
        one, two = logged(single, key), logged(distributed, key)
        assert sorted(one) == sorted(two) == [0, 1, 2], key
        assert two == pytest.approx(one, abs=TOLERANCE), key
    assert_same_student(single / "checkpoints" / "last.ckpt", distributed / "checkpoints" / "last.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["ddp", "fsdp"])
def test_two_processes_reach_the_single_process_loss(runs: dict[str, Path], setup: str) -> None:
    assert_same_training(runs["single"], runs[setup], ROLLOUT_STATISTICS)


MULTI_TEACHER = [  # math and code rows, one per process and step: the ranks often hold different domains
    '--data.train=[{path: "toy:math", limit: 16}, {path: "toy:code", limit: 16}]',
    "--model.sampling.temperature=0",
    "--trainer.max_steps=3",
]


def ranks_hold_different_domains() -> bool:
    """Whether, in the runs below, some step gives the two processes rows of different domains."""
    from gopd_lightning.data.datamodule import ResumableSampler

    domains = ["math"] * 16 + ["code"] * 16
    orders = [list(ResumableSampler(domains, num_replicas=2, rank=rank, seed=0)) for rank in range(2)]
    return any(domains[a] != domains[b] for a, b in zip(orders[0][:3], orders[1][:3], strict=True))


@pytest.mark.slow
def test_fsdp_with_a_teacher_per_domain_matches_one_process_when_ranks_hold_different_domains(
    models: dict[str, str], tmp_path: Path
) -> None:
    assert ranks_hold_different_domains()
    teachers = f'--model.teachers={{"math": "{models["teacher"]}", "code": "{models["teacher_code"]}"}}'
    single = fit(tmp_path / "single", "single", models, teachers, *MULTI_TEACHER, "--data.batch_size=2")
    sharded = fit(tmp_path / "fsdp", "fsdp", models, teachers, *MULTI_TEACHER, "--data.batch_size=1")
    per_domain = [f"train/{domain}/{key}" for domain in ("math", "code") for key in ("reverse_kl", "response_length")]
    assert_same_training(single, sharded, ROLLOUT_STATISTICS)
    for key in per_domain:  # logged on every step that some rank had the domain, the same on both
        assert logged(sharded, key) == pytest.approx(logged(single, key), abs=TOLERANCE), key


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["ddp", "fsdp"])
def test_the_full_vocab_estimator_with_a_teacher_per_domain_matches_one_process(
    models: dict[str, str], tmp_path: Path, setup: str
) -> None:
    assert ranks_hold_different_domains()  # under FSDP2 a rank scores a placeholder for a domain it lacks
    teachers = f'--model.teachers={{"math": "{models["teacher"]}", "code": "{models["teacher_code"]}"}}'
    options = [teachers, *MULTI_TEACHER, "--model.estimator=full_vocab"]
    single = fit(tmp_path / "single", "single", models, *options, "--data.batch_size=2")
    distributed = fit(tmp_path / setup, setup, models, *options, "--data.batch_size=1")
    statistics = [key for key in ROLLOUT_STATISTICS if key != "train/advantage"]
    assert_same_training(single, distributed, [*statistics, "train/target_kl"])


@pytest.mark.slow
def test_fsdp_checkpoint_is_distributed_holds_the_student_only_and_exports(runs: dict[str, Path]) -> None:
    checkpoint = runs["fsdp"] / "checkpoints" / "last.ckpt"
    files = sorted(p.name for p in checkpoint.iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]  # a shard per rank
    keys = FileSystemReader(checkpoint).read_metadata().state_dict_metadata
    assert any(key.startswith("optimizer_0.state.student.") for key in keys)
    assert all(key.startswith(("state_dict.student.", "optimizer_0.")) for key in keys)
    assert not any("teachers" in key or "reference" in key for key in keys)

    out = checkpoint.parents[2] / "exported"
    gopd("export", str(checkpoint), "--output", str(out), cwd=out.parent)
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    trained = load_student(checkpoint).student.state_dict()
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], trained[k]) for k in trained)


@pytest.mark.slow
def test_resume_continues_the_interrupted_run(models: dict[str, str], tmp_path: Path) -> None:
    """FSDP2, sampling at temperature 1: steps 3-4 resumed from the step-2 checkpoint = steps 3-4 in one go."""
    sampled = ["--model.sampling.temperature=1.0", "--trainer.max_steps=4"]
    every_2 = '{"class_path": "ModelCheckpoint", "init_args": {"every_n_train_steps": 2, "save_top_k": -1}}'
    straight = fit(tmp_path / "straight", "fsdp", models, *sampled, f"--trainer.callbacks+={every_2}")
    step_2 = straight / "checkpoints" / "epoch=0-step=2.ckpt"  # what a run interrupted in step 3 leaves
    resumed = fit(tmp_path / "resumed", "fsdp", models, *sampled, f"--ckpt_path={step_2}")
    assert sorted(logged(resumed, "train/loss")) == [2, 3]
    for step, loss in logged(resumed, "train/loss").items():
        assert loss == pytest.approx(logged(straight, "train/loss")[step], abs=TOLERANCE), step
    assert_same_student(straight / "checkpoints" / "last.ckpt", resumed / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_a_whole_rollout_all_gathers_each_group_once(tmp_path: Path) -> None:
    layers, tokens = 2, 4
    script = ROOT / "benchmarks" / "rollout_allgathers.py"
    args = [sys.executable, str(script), f"--layers={layers}", f"--new-tokens={tokens}", "--rows=2"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = dict(re.findall(r"^\| ([a-z ,]+) \| (\d+) \|", done.stdout, re.MULTILINE))
    layerwise = str(1 + layers * tokens)  # the root once, every layer for every generated token
    assert counts == {"whole": str(layers + 1), "layerwise": layerwise, "whole, memory short": layerwise}


def test_activation_checkpointing_keeps_the_kv_cache_and_the_gradients(tiny_models: dict[str, str]) -> None:
    from gopd_lightning.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_models["student"])
    plain, checkpointed = (load_causal_lm(tiny_models["student"]).train() for _ in range(2))
    parallelize(checkpointed, [], None, ShardingConfig(activation_checkpointing=True))
    assert all(layer.gradient_checkpointing for layer in decoder_layers(checkpointed))

    lengths = []
    decoder_layers(checkpointed)[0].register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    rows = [{"prompt": [{"role": "user", "content": "What is 1+2?"}], "domain": "math"}]
    rollout = generate_rollout(checkpointed, tokenizer, rows, SamplingConfig(temperature=0, max_new_tokens=5))
    assert len(lengths) > 1 and set(lengths[1:]) == {1}  # after the prompt, one new token per step: the cache

    for model, forwards in ((plain, 1), (checkpointed, 2)):  # checkpointed: again in the backward pass
        calls = []
        hook = decoder_layers(model)[0].self_attn.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        logp, _, _ = response_logprobs(model, rollout.input_ids, rollout.attention_mask, rollout.response_ids.shape[1])
        logp.sum().backward()
        hook.remove()
        assert len(calls) == forwards
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
