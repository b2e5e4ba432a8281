"""The offline toy world: a tokenizer, a weak base model and a stronger teacher, made locally.

``toy_model_path("base")`` returns a directory that ``from_pretrained`` loads, preparing the world
on first use. Preparation is deterministic by seed and takes about a minute on two CPU cores:
a tiny Qwen3 model is trained with supervised fine-tuning on the toy tasks for a few hundred steps
(the base: weak but not hopeless), then further until it is good (the teacher, like an RL-trained
expert made from the same base). The result is cached under ``$GOPD_HOME`` (default
``~/.cache/gopd-lightning``) in a folder named by a hash of the recipe, so a changed recipe
rebuilds; ``gopd toy prepare --force`` rebuilds on demand. A file lock lets one process build
while other ranks wait.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import FileLock
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from gopd_lightning.toy.tasks import TASK_FAMILIES, problems
from gopd_lightning.toy.tokenizer import build_tokenizer

log = logging.getLogger(__name__)
RECIPE_VERSION = 1


@dataclass(frozen=True)
class ToyModelShape:
    """Size of a toy Qwen3 model."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2


@dataclass(frozen=True)
class ToyRecipe:
    """How the toy base and teacher are made."""

    seed: int = 0
    shape: ToyModelShape = field(default_factory=ToyModelShape)
    families: tuple[str, ...] = ("math",)
    base_steps: int = 300
    teacher_steps: int = 900
    batch_size: int = 64
    lr: float = 3e-3

    def digest(self) -> str:
        blob = json.dumps({"version": RECIPE_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def toy_home() -> Path:
    """Where prepared toy worlds are cached: ``$GOPD_HOME/toy`` or ``~/.cache/gopd-lightning/toy``."""
    return Path(os.environ.get("GOPD_HOME", Path.home() / ".cache" / "gopd-lightning")) / "toy"


def toy_model_path(name: str, recipe: ToyRecipe | None = None) -> Path:
    """Directory of toy model ``name`` ("base" or "teacher-math"), preparing the world if needed."""
    root = prepare_toy_world(recipe or ToyRecipe())
    path = root / name
    if not path.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ValueError(f"unknown toy model {name!r}; the toy world has {known}")
    return path


def prepare_toy_world(recipe: ToyRecipe, force: bool = False) -> Path:
    """Build (or re-use) the toy world for ``recipe`` and return its folder."""
    root = toy_home() / recipe.digest()
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if (root / "READY").exists() and not force:
            return root
        shutil.rmtree(root, ignore_errors=True)
        log.info("Preparing the toy world in %s", root)
        _build(recipe, root)
        (root / "READY").write_text(json.dumps(dataclasses.asdict(recipe), indent=2))
    return root


def _build(recipe: ToyRecipe, root: Path) -> None:
    tokenizer = build_tokenizer()
    torch.manual_seed(recipe.seed)
    model = Qwen3ForCausalLM(_config(recipe.shape, tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    total = recipe.base_steps + recipe.teacher_steps
    batches = _sft_batches(tokenizer, recipe, total)
    with tqdm(total=total, desc="toy world: base", unit="step", mininterval=1.0) as bar:
        for step in range(total):
            if step == recipe.base_steps:
                _save(model, tokenizer, root / "base")
                bar.set_description("toy world: teacher")
            # the teacher phase anneals the learning rate so the expert ends sharp and stable
            progress = max(0, step - recipe.base_steps) / max(1, recipe.teacher_steps)
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
            loss = model(**batches[step]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
    for family in recipe.families:
        _save(model, tokenizer, root / f"teacher-{TASK_FAMILIES[family].domain}")


def _config(shape: ToyModelShape, tokenizer: PreTrainedTokenizerBase) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=2 * shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.hidden_size // shape.num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def _sft_batches(tokenizer: PreTrainedTokenizerBase, recipe: ToyRecipe, steps: int) -> list[dict[str, torch.Tensor]]:
    """Supervised batches of gold responses; the loss covers the response tokens only."""
    per_family = -(-steps * recipe.batch_size // len(recipe.families))
    pool = [
        (TASK_FAMILIES[family].domain, p)
        for family in recipe.families
        for p in problems(family, per_family, recipe.seed, "train")
    ]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(recipe.seed)).tolist()
    batches = []
    for step in range(steps):
        chosen = [pool[i][1] for i in order[step * recipe.batch_size : (step + 1) * recipe.batch_size]]
        batches.append(_encode_sft(tokenizer, chosen))
    return batches


def _encode_sft(tokenizer: PreTrainedTokenizerBase, chosen: list) -> dict[str, torch.Tensor]:
    prompts = [[{"role": "user", "content": p.question}] for p in chosen]
    prompt_texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
    full_texts = [text + p.solution + tokenizer.eos_token for text, p in zip(prompt_texts, chosen, strict=True)]
    prompt_lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in prompt_texts]
    tokenizer.padding_side = "right"
    encoded = tokenizer(full_texts, add_special_tokens=False, padding=True, return_tensors="pt")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    for row, length in enumerate(prompt_lengths):
        labels[row, :length] = -100
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}


def _save(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
