"""The offline toy world: one tokenizer and a family of tiny Qwen3 models, made locally and lazily.

``toy_model_path("base")`` returns a directory that ``from_pretrained`` loads, building the model
(and whatever it continues from) on first use, deterministic by seed on one machine. The bases are
supervised fine-tuning on gold responses of the toy tasks; the math teachers are made as the paper's
were, by RL (the project's GRPO, verifier rewards) from their base:

- ``base``: a small model trained on math and code until it answers 30% of held-out math problems
  (weak on both, not hopeless: on code it sits on the plateau before it learns the algorithm);
- ``teacher-math``: GRPO of the base on math: clearly better than the base, far from perfect (room
  above it for a student to pass it);
- ``teacher-code``: the base trained further on gold code (GRPO on code is sandbox-bound: about 6 s a
  step on two cores, and 20 steps did not move the base off its plateau);
- ``big-base``: a model twice as deep, trained about as briefly on both domains (better than ``base``);
- ``big-teacher-math``: GRPO of ``big-base`` on math (strong-to-weak distillation, with ``big-base``
  as the corrected reference).

Each model is cached on its own under ``$GOPD_HOME/toy`` (default ``~/.cache/gopd-lightning``)
in a folder named by a hash of its recipe and its parent's, so a changed recipe rebuilds it and
everything built from it, and a run only pays for the models it names (the default toy config:
base and teacher-math, about two minutes on two CPU cores). A file lock per model lets one process
build while other ranks wait; ``gopd toy prepare [--force] [--all]`` builds ahead of time.

Another CPU rounds floats differently, which over a thousand steps moves a model as another seed
does, so the recipes aim at qualities that do not hinge on exact weights: the base stops at a
target accuracy instead of a step count, the code expert trains long past its domain's learning
onset, and the RL teachers climb a curve that flattens well before their last step.
``benchmarks/toy_world_spread.py`` measures every model over seeds (README: the toy world).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from filelock import FileLock
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from gopd_lightning.toy.tasks import Problem, problems
from gopd_lightning.toy.tokenizer import build_tokenizer

log = logging.getLogger(__name__)
RECIPE_VERSION = 3
CHECK_EVERY, CHECK_FROM = 50, 600
"""Steps between the accuracy checks of a recipe with ``stop_at``, and the first step checked."""
STOP_SEED = 7
"""Data seed of the validation problems ``stop_at`` checks (the tests measure on seed 9)."""
READY = "READY"


@dataclass(frozen=True)
class ToyModelShape:
    """Size of a toy Qwen3 model."""

    hidden_size: int = 64
    """Width of the residual stream (the MLP is twice as wide)."""
    num_layers: int = 2
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""


@dataclass(frozen=True)
class ToyModelRecipe:
    """How one toy model is made: supervised fine-tuning on gold responses, or GRPO, on toy task families."""

    families: tuple[str, ...]
    """Task families it is trained on: each step's batch is of one family, taking turns in this order
    (a family listed twice gets twice the steps)."""
    steps: int
    """Optimiser steps."""
    parent: str | None = None
    """Toy model whose weights it continues from; None starts from random weights of ``shape``."""
    shape: ToyModelShape | None = None
    """Size of a model trained from scratch (a continued model keeps its parent's)."""
    lr: float = 1.5e-3
    """Peak learning rate of AdamW."""
    anneal: bool = False
    """Cosine-anneal the learning rate to 5% of its peak, so an expert ends sharp and stable."""
    batch_size: int = 32
    """Gold responses per step."""
    stop_at: tuple[str, float] | None = None
    """(domain, accuracy): stop once the held-out accuracy on that domain (a validation set of its
    own, not the one the tests measure) reaches the value, checked every ``CHECK_EVERY`` steps;
    ``steps`` is then the most. A learning curve's onset moves by hundreds of steps with float
    rounding (another CPU) as with another seed; a target accuracy does not."""

    method: Literal["sft", "grpo"] = "sft"
    """``sft``: cross-entropy on gold responses; ``grpo``: RL with the verifier's rewards from ``parent`` (the
    way the paper's teachers were made; ``batch_size`` is then prompts per step, one update each)."""
    group_size: int = 8
    """GRPO: samples per prompt."""
    max_new_tokens: int = 24
    """GRPO: response tokens per sample (as the toy configs sample)."""

    def __post_init__(self) -> None:
        if self.method == "grpo" and self.parent is None:
            raise ValueError("a GRPO toy model recipe needs a 'parent' to start from")
        if (self.parent is None) == (self.shape is None):
            raise ValueError("a toy model recipe needs exactly one of 'parent' (continue) and 'shape' (from scratch)")


GRPO_FIELDS = ("method", "group_size", "max_new_tokens")
SMALL, BIG = ToyModelShape(), ToyModelShape(num_layers=4)
TOY_MODELS: dict[str, ToyModelRecipe] = {
    "base": ToyModelRecipe(("math", "code"), steps=1400, shape=SMALL, stop_at=("math", 0.3)),
    "teacher-math": ToyModelRecipe(("math",), steps=200, parent="base", method="grpo", lr=1e-4, batch_size=16),
    "teacher-code": ToyModelRecipe(("code",), steps=1000, parent="base", anneal=True),
    "big-base": ToyModelRecipe(("math", "math", "code"), steps=900, shape=BIG),
    "big-teacher-math": ToyModelRecipe(("math",), steps=200, parent="big-base", method="grpo", lr=1e-4, batch_size=16),
}
"""Every toy model by name (``toy:<name>`` in configs)."""
DEFAULT_MODELS = ("base", "teacher-math")
"""What ``gopd toy prepare`` builds without ``--all``: the models of the default toy configs."""


@dataclass(frozen=True)
class ToyRecipe:
    """The toy world: a seed and the recipe of every model."""

    seed: int = 0
    """Seed of weights, data and order; the same seed gives the same models."""
    models: Mapping[str, ToyModelRecipe] = field(default_factory=lambda: dict(TOY_MODELS))
    """Recipes by model name."""

    def recipe(self, name: str) -> ToyModelRecipe:
        """The recipe of model ``name``; a ValueError lists the known ones."""
        if name not in self.models:
            raise ValueError(f"unknown toy model {name!r}; the toy world has {sorted(self.models)}")
        return self.models[name]

    def lineage(self, name: str) -> list[str]:
        """``name`` and the models it continues from, the first-built (a from-scratch model) first."""
        chain = [name]
        while (parent := self.recipe(chain[-1]).parent) is not None:
            if parent in chain:
                raise ValueError(f"toy model {name!r} continues from itself through {chain}")
            chain.append(parent)
        return chain[::-1]

    def digest(self, name: str) -> str:
        """Hash of what makes model ``name``: its recipe, the seed and its parent's digest."""
        recipe = self.recipe(name)
        parent = None if recipe.parent is None else self.digest(recipe.parent)
        fields = dataclasses.asdict(recipe)
        if recipe.method == "sft":  # what only GRPO uses does not change an SFT model
            for unused in GRPO_FIELDS:
                fields.pop(unused)
        blob = json.dumps(
            {"version": RECIPE_VERSION, "seed": self.seed, "parent_digest": parent, **fields}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def toy_home() -> Path:
    """Where prepared toy models are cached: ``$GOPD_HOME/toy`` or ``~/.cache/gopd-lightning/toy``."""
    return Path(os.environ.get("GOPD_HOME", Path.home() / ".cache" / "gopd-lightning")) / "toy"


def toy_model_path(name: str, recipe: ToyRecipe | None = None) -> Path:
    """Directory of toy model ``name`` (see ``TOY_MODELS``), building it and its parents if needed."""
    return prepare_toy_model(name, recipe or ToyRecipe())


def prepare_toy_world(
    recipe: ToyRecipe | None = None, names: Iterable[str] = DEFAULT_MODELS, force: bool = False
) -> dict[str, Path]:
    """Build (or re-use) the toy models ``names``; ``force`` rebuilds them and their parents.

    Models that share no ancestor (e.g. ``base`` and ``big-base`` with what is trained from them) are
    built in parallel processes, one CPU core each.
    """
    recipe = recipe or ToyRecipe()
    names = list(names)
    lineages = dict.fromkeys(model for name in names for model in recipe.lineage(name))  # parents first
    trees: dict[str, list[str]] = {}  # from-scratch model -> the models built on it, parents first
    for model in lineages:
        trees.setdefault(recipe.lineage(model)[0], []).append(model)
    pending = [tree for tree in trees.values() if force or not all(_is_ready(m, recipe) for m in tree)]
    if len(pending) > 1 and (os.cpu_count() or 1) > 1:
        _build_in_parallel(recipe, pending, force)
        force = False  # built: what follows only collects the folders
    paths = {model: prepare_toy_model(model, recipe, force=force) for model in lineages}
    return {name: paths[name] for name in names}


TREE_BUILDER = (
    "import logging, pickle, sys; from gopd_lightning.toy.world import prepare_toy_model; "
    "logging.basicConfig(level=logging.INFO, format='%(message)s'); "
    "recipe, models, force = pickle.load(sys.stdin.buffer); "
    "[prepare_toy_model(model, recipe, force=force) for model in models]"
)


def _build_in_parallel(recipe: ToyRecipe, trees: list[list[str]], force: bool) -> None:
    """Build each tree (parents first) in its own fresh interpreter, all at once.

    Fresh interpreters, not multiprocessing: spawn would re-run the user's unguarded script in
    every worker, and cannot start at all from ``python -``.
    """
    builders = []
    for models in trees:
        builder = subprocess.Popen([sys.executable, "-c", TREE_BUILDER], stdin=subprocess.PIPE)
        builder.stdin.write(pickle.dumps((recipe, models, force)))
        builder.stdin.close()
        builders.append((models, builder))
    failed = [models for models, builder in builders if builder.wait() != 0]
    if failed:
        raise RuntimeError(f"building the toy models {failed} failed (their output is above)")


def _model_folder(name: str, recipe: ToyRecipe) -> Path:
    return toy_home() / f"{name}-{recipe.digest(name)}"


def _is_ready(name: str, recipe: ToyRecipe) -> bool:
    return (_model_folder(name, recipe) / READY).exists()


def prepare_toy_model(name: str, recipe: ToyRecipe, force: bool = False) -> Path:
    """Build (or re-use) toy model ``name`` and return its folder; missing parents are built first."""
    model_recipe = recipe.recipe(name)
    parent = None if model_recipe.parent is None else prepare_toy_model(model_recipe.parent, recipe)
    folder = _model_folder(name, recipe)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / READY).exists() and not force:
            return folder / name
        shutil.rmtree(folder, ignore_errors=True)
        log.info("Preparing toy model %r in %s", name, folder)
        _train(name, model_recipe, recipe.seed, parent, folder / name)
        (folder / READY).write_text(json.dumps(dataclasses.asdict(model_recipe), indent=2))
    return folder / name


def _train(name: str, recipe: ToyModelRecipe, seed: int, parent: Path | None, path: Path) -> None:
    """Make ``name`` by its recipe's method and save it with the tokenizer at ``path``."""
    if recipe.method == "grpo":
        _train_with_grpo(name, recipe, model_seed(seed, name), parent, path)
    else:
        _train_with_sft(name, recipe, seed, parent, path)


def _train_with_grpo(name: str, recipe: ToyModelRecipe, seed: int, parent: Path | None, path: Path) -> None:
    """GRPO in a fresh interpreter (``gopd_lightning.toy_teachers``): a Lightning run of its own, whose random
    state, threads and loggers never touch the process that asked for the model."""
    done = subprocess.run(
        [sys.executable, "-m", "gopd_lightning.toy_teachers"], input=pickle.dumps((name, recipe, seed, parent, path))
    )
    if done.returncode != 0:
        raise RuntimeError(f"GRPO of the toy model {name!r} failed (exit {done.returncode}; its output is above)")


def _train_with_sft(name: str, recipe: ToyModelRecipe, seed: int, parent: Path | None, path: Path) -> None:
    """Supervised fine-tuning of ``name`` on gold responses, saved with the tokenizer at ``path``.

    Runs on one thread: as fast as more for models this small, immune to other processes competing for
    the cores (two threads on a busy machine can be many times slower), and the same result anywhere.
    The caller's random state is left as it was: a run samples the same on an empty cache as on a warm one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            tokenizer = build_tokenizer()
            torch.manual_seed(model_seed(seed, name))
            if parent is None:
                model = Qwen3ForCausalLM(_config(recipe.shape, tokenizer))
            else:
                model = Qwen3ForCausalLM.from_pretrained(parent, dtype=torch.float32)
            _fit(name, model.train(), recipe, _sft_batches(tokenizer, recipe, model_seed(seed, name)))
    finally:
        torch.set_num_threads(threads)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def model_seed(seed: int, name: str) -> int:
    """The seed of model ``name``'s weights and data in the toy world of ``seed``."""
    return int(hashlib.sha256(f"{seed}/{name}".encode()).hexdigest()[:8], 16)


def _fit(name: str, model: Qwen3ForCausalLM, recipe: ToyModelRecipe, batches: list[dict]) -> None:
    """AdamW on the batches, up to ``recipe.stop_at`` when it is set."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    with tqdm(total=recipe.steps, desc=f"toy world: {name}", unit="step", mininterval=1.0) as bar:
        for step, batch in enumerate(batches):
            if recipe.anneal:
                cosine = 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * (0.05 + 0.95 * cosine)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
            done = step + 1
            checked = recipe.stop_at is not None and done >= CHECK_FROM and done % CHECK_EVERY == 0
            if checked and _reached(model, *recipe.stop_at):
                log.info("toy model %r reached %s accuracy %s after %d steps", name, *recipe.stop_at, done)
                return


def _reached(model: Qwen3ForCausalLM, domain: str, target: float) -> bool:
    from gopd_lightning.toy.quality import held_out_accuracy

    prompts = build_tokenizer()
    prompts.padding_side = "left"
    model.eval()
    try:
        return held_out_accuracy(model, prompts, domain, seed=STOP_SEED) >= target
    finally:
        model.train()


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


def _sft_batches(tokenizer: PreTrainedTokenizerBase, recipe: ToyModelRecipe, seed: int) -> list[dict]:
    """One batch of gold training problems per step, of one family: short problems stay in short batches."""
    turns = [recipe.families[step % len(recipe.families)] for step in range(recipe.steps)]
    pools = {
        family: iter(problems(family, turns.count(family) * recipe.batch_size, seed, "train"))
        for family in set(recipe.families)
    }
    return [_encode_sft(tokenizer, [next(pools[family]) for _ in range(recipe.batch_size)]) for family in turns]


def _encode_sft(tokenizer: PreTrainedTokenizerBase, chosen: list[Problem]) -> dict[str, torch.Tensor]:
    """Prompt + gold response + EOS, right-padded; the loss covers the response tokens only."""
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
