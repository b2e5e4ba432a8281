"""The offline toy world: tokenizer, tasks, and the prepared base and teacher models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from gopd_lightning.models import load_causal_lm, load_tokenizer
from gopd_lightning.rewards import score
from gopd_lightning.rollout import SamplingConfig, generate_rollout
from gopd_lightning.toy.tasks import problems, toy_rows
from gopd_lightning.toy.tokenizer import build_tokenizer
from gopd_lightning.toy.world import ToyRecipe, prepare_toy_world


def test_tokenizer_round_trips_through_save_and_chat_template(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "What is 12+30?"}]
    text = loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhat is 12+30?<|im_end|>\n<|im_start|>assistant\n"
    ids = loaded(text + "12+30=42. \\boxed{42}<|im_end|>", add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids, skip_special_tokens=True) == "user\nWhat is 12+30?\nassistant\n12+30=42. \\boxed{42}"
    assert ids[-1] == loaded.eos_token_id and loaded.pad_token_id != loaded.eos_token_id
    assert loaded.convert_ids_to_tokens(ids).count("\\boxed") == 1


def test_tasks_are_deterministic_and_splits_disjoint() -> None:
    assert toy_rows("math", 50, seed=3) == toy_rows("math", 50, seed=3)
    assert toy_rows("math", 50, seed=3) != toy_rows("math", 50, seed=4)
    train = {p.question for p in problems("math", 3000, 0, "train")}
    val = {p.question for p in problems("math", 500, 0, "val")}
    assert not train & val
    for p in problems("math", 20, 0, "train"):
        a, b = p.question.removeprefix("What is ").removesuffix("?").split("+")
        assert p.answer == str(int(a) + int(b)) and score("math", p.solution, p.answer) == 1.0
    with pytest.raises(KeyError, match="unknown toy task family"):
        toy_rows("chess", 1)


@pytest.fixture(scope="module")
def toy_world(toy_home: Path) -> Path:
    return prepare_toy_world(ToyRecipe())


def accuracy(path: Path, rows: list[dict]) -> float:
    tokenizer, model = load_tokenizer(str(path)), load_causal_lm(str(path))
    torch.manual_seed(0)
    rollout = generate_rollout(model, tokenizer, rows, SamplingConfig(max_new_tokens=24))
    texts = tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
    return sum(score("math", t, r["ground_truth"]) for t, r in zip(texts, rollout.rows, strict=True)) / len(rows)


def test_prepared_base_is_weak_and_teacher_clearly_better(toy_world: Path) -> None:
    rows = toy_rows("math", 256, seed=9, split="val")
    base, teacher = accuracy(toy_world / "base", rows), accuracy(toy_world / "teacher-math", rows)
    assert 0.15 <= base <= 0.6, base
    assert teacher >= base + 0.3, (base, teacher)


def test_prepared_world_is_reused_and_toy_names_resolve(toy_world: Path) -> None:
    stamp = (toy_world / "base" / "model.safetensors").stat().st_mtime_ns
    assert prepare_toy_world(ToyRecipe()) == toy_world
    assert (toy_world / "base" / "model.safetensors").stat().st_mtime_ns == stamp
    assert load_tokenizer("toy:base").name_or_path == str(toy_world / "base")
    with pytest.raises(ValueError, match="unknown toy model 'nope'"):
        load_tokenizer("toy:nope")
