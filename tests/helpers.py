"""Plain helpers shared by the test modules (fixtures live in conftest.py): tiny models, a module, data and
a trainer built the way the tests need them, and the ``gopd`` command run as a user runs it."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from gopd_lightning import DataSource, GOPDModule, PromptDataModule, SamplingConfig, policy
from gopd_lightning.callbacks import BenchmarkAccuracy, StepStatistics
from gopd_lightning.rollout import encode_prompts
from gopd_lightning.toy.tokenizer import build_tokenizer

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"


def experiment_files(path: Path) -> list[str]:
    """An experiment's configs in order: its folder's piece (``configs/toy.yaml`` for ``configs/toy/*``), then it."""
    piece = path.parent.with_suffix(".yaml")
    return [str(piece), str(path)] if piece.is_file() else [str(path)]


def config_args(files: list[str]) -> list[str]:
    """``-c a.yaml -c b.yaml ...``"""
    return [arg for path in files for arg in ("-c", path)]


EXOPD_FILES = experiment_files(CONFIGS / "toy" / "exopd.yaml")
EXOPD = config_args(EXOPD_FILES)
"""The toy ExOPD experiment as ``gopd`` arguments."""


def save_tiny_model(path: Path, seed: int, arch: str = "qwen3", vocab_size: int | None = None, tokenizer=None) -> str:
    """A randomly initialised tiny causal LM (and its tokenizer) saved at ``path``."""
    tokenizer = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=8, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def make_module(models: dict[str, str], **overrides) -> GOPDModule:
    kwargs = dict(
        student=models["student"],
        teachers={"math": models["teacher"]},
        lam=1.25,
        sampling=SamplingConfig(max_new_tokens=6),
        eval_sampling=SamplingConfig(max_new_tokens=6),
        max_prompt_length=64,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    )
    kwargs.update(overrides)
    return GOPDModule(**kwargs)


def make_data(batch_size: int = 4, rows: int = 16, path: str = "toy:math") -> PromptDataModule:
    return PromptDataModule(
        train=[DataSource(path, limit=rows)],
        val=[DataSource(path, split="val", limit=8)],
        batch_size=batch_size,
        eval_batch_size=8,
    )


def make_trainer(tmp_path: Path | None = None, steps: int = 2, **overrides) -> pl.Trainer:
    """A quiet CPU trainer that logs what the shared defaults log (step statistics, benchmark scores)."""
    callbacks = [StepStatistics(), BenchmarkAccuracy(tables=False), *overrides.pop("callbacks", [])]
    kwargs = dict(
        callbacks=callbacks,
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


def full_logits(model: torch.nn.Module, tokenizer, rollout, grad: bool = False) -> torch.Tensor:  # noqa: ANN001
    """[rows, response, vocab] fp32 logits of ``model`` at the rollout's response positions, by hand."""
    prompts = encode_prompts(tokenizer, rollout.rows)
    ids = torch.cat([prompts["input_ids"], rollout.response_ids], dim=1)
    mask = torch.cat([prompts["attention_mask"], rollout.response_mask.long()], dim=1)
    with torch.set_grad_enabled(grad):
        logits = model.eval()(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)
        ).logits
    return logits[:, prompts["input_ids"].shape[1] - 1 : -1, : len(tokenizer)].float()


def token_logp(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


class GivenRows(PromptDataModule):
    """A DataModule whose one training batch is the given rows."""

    def __init__(self, rows: list[dict]) -> None:
        super().__init__()
        self.rows = rows

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.rows, batch_size=len(self.rows), collate_fn=list)


def run_one_step(
    module: GOPDModule, batch_size: int = 4, rows: list[dict] | None = None, **trainer_options
) -> tuple[pl.Trainer, object, object]:
    """Fit one step (on ``rows``, else toy math); return the trainer, the student before it and the step's rollout."""
    module.configure_model()
    before = copy.deepcopy(module.student)
    captured = []
    rollout_fn = module.rollout
    module.rollout = lambda *args, **kwargs: captured.append(rollout_fn(*args, **kwargs)) or captured[-1]
    pl.seed_everything(0)
    trainer = make_trainer(steps=1, **trainer_options)
    trainer.fit(module, datamodule=GivenRows(rows) if rows else make_data(batch_size=batch_size))
    return trainer, before, captured[0]


def spy_on_losses(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record every ``policy_gradient_loss`` call of the update loop: its arguments (defaults filled in) and loss."""
    calls = []
    real = policy.policy_gradient_loss
    signature = inspect.signature(real)

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        loss = real(*args, **kwargs)
        calls.append(
            {**bound.arguments, "logp": bound.arguments["logp"].detach().clone(), "loss": float(loss.detach())}
        )
        return loss

    monkeypatch.setattr(policy, "policy_gradient_loss", spy)
    return calls


def gopd(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gopd_lightning.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr
