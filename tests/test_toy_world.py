"""The offline toy world: tokenizer, tasks, and the prepared models (lazy, cached by recipe, weak vs strong)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from gopd_lightning.cli import main
from gopd_lightning.models import load_causal_lm, load_tokenizer
from gopd_lightning.rewards import score, score_batch
from gopd_lightning.toy.quality import MAX_PROMPT_TOKENS, MAX_RESPONSE_TOKENS, held_out_accuracy
from gopd_lightning.toy.tasks import TASK_FAMILIES, problems, toy_rows
from gopd_lightning.toy.tokenizer import build_tokenizer
from gopd_lightning.toy.world import (
    DEFAULT_MODELS,
    ToyModelRecipe,
    ToyModelShape,
    ToyRecipe,
    prepare_toy_world,
    toy_model_path,
)

QUESTION = re.compile(r"Write Python f\(x\) with f\(0\)=(\d+), f\(1\)=(\d+)\.")


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


@pytest.mark.parametrize("family", sorted(TASK_FAMILIES))
def test_tasks_are_deterministic_splits_disjoint_and_short(family: str) -> None:
    assert toy_rows(family, 50, seed=3) == toy_rows(family, 50, seed=3)
    assert toy_rows(family, 50, seed=3) != toy_rows(family, 50, seed=4)
    assert {row["domain"] for row in toy_rows(family, 5)} == {family}
    train = {p.question for p in problems(family, 3000, 0, "train")}
    val = {p.question for p in problems(family, 500, 0, "val")}
    assert not train & val and len(val) > 100
    tokenizer = build_tokenizer()
    for p in problems(family, 500, 0, "train"):
        messages = [{"role": "user", "content": p.question}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        assert len(prompt["input_ids"] if isinstance(prompt, dict) else prompt) <= MAX_PROMPT_TOKENS, p.question
        assert len(tokenizer(p.solution + tokenizer.eos_token)["input_ids"]) <= MAX_RESPONSE_TOKENS, p.solution
    with pytest.raises(KeyError, match="unknown toy task family"):
        toy_rows("chess", 1)


def test_math_answers_are_sums() -> None:
    for p in problems("math", 20, 0, "train"):
        a, b = p.question.removeprefix("What is ").removesuffix("?").split("+")
        assert p.answer == str(int(a) + int(b)) and score("math", p.solution, p.answer) == 1.0


def test_code_answers_are_checked_by_the_sandboxed_scorer() -> None:
    chosen = problems("code", 8, 0, "val")
    responses, truths = [], []
    for p in chosen:
        at_0, at_1 = map(int, QUESTION.fullmatch(p.question).groups())
        slope = at_1 - at_0
        assert p.solution == f"```python\ndef f(x): return {slope}*x+{at_0}\n```"
        right = f"```python\ndef f(x):\n    return {at_0} + {slope} * x\n```"
        wrong_slope = p.solution.replace(f"{slope}*x", f"{slope + 1}*x")
        only_shown = f"```python\ndef f(x): return [{at_0}, {at_1}][x]\n```"  # right on f(0) and f(1) only
        responses += [p.solution, right, wrong_slope, only_shown, f"f(x) = {slope}x + {at_0}"]
        truths += [p.answer] * 5
    assert score_batch(["code"] * len(responses), responses, truths) == [1.0, 1.0, 0.0, 0.0, 0.0] * len(chosen)


# ---------------------------------------------------------------- building: lazy, cached, deterministic
TINY = ToyModelShape(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1)


def tiny_world(seed: int = 0, root_steps: int = 2) -> ToyRecipe:
    return ToyRecipe(
        seed=seed,
        models={
            "root": ToyModelRecipe(("math",), steps=root_steps, shape=TINY, batch_size=4),
            "child": ToyModelRecipe(("code",), steps=2, parent="root", batch_size=4),
            "other": ToyModelRecipe(("math", "code"), steps=2, shape=TINY, batch_size=4),
        },
    )


def built(home: Path) -> list[str]:
    return sorted(path.name.rsplit("-", 1)[0] for path in (home / "toy").iterdir() if path.is_dir())


def test_models_are_built_lazily_with_their_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOPD_HOME", str(tmp_path / "a"))
    recipe = tiny_world()
    child = toy_model_path("child", recipe)
    assert built(tmp_path / "a") == ["child", "root"]  # not "other"
    assert child.name == "child" and load_tokenizer(str(child)).get_vocab() == build_tokenizer().get_vocab()
    stamp = (child / "model.safetensors").stat().st_mtime_ns
    assert toy_model_path("child", recipe) == child and (child / "model.safetensors").stat().st_mtime_ns == stamp

    # a changed recipe changes the folder of the model and of every model built from it
    longer = tiny_world(root_steps=3)
    assert longer.digest("root") != recipe.digest("root") and longer.digest("child") != recipe.digest("child")
    assert longer.digest("other") == recipe.digest("other")

    # force rebuilds what is asked and its parents, into the same folders
    root = toy_model_path("root", recipe)
    root_stamp = (root / "model.safetensors").stat().st_mtime_ns
    assert prepare_toy_world(recipe, ["child"], force=True) == {"child": child}
    assert (child / "model.safetensors").stat().st_mtime_ns != stamp
    assert (root / "model.safetensors").stat().st_mtime_ns != root_stamp

    # the same seed gives the same weights in another cache; another seed does not
    monkeypatch.setenv("GOPD_HOME", str(tmp_path / "b"))
    weights = load_file(child / "model.safetensors")
    again = load_file(toy_model_path("child", recipe) / "model.safetensors")
    assert all(torch.equal(weights[key], again[key]) for key in weights)
    reseeded = load_file(toy_model_path("child", tiny_world(seed=1)) / "model.safetensors")
    assert not torch.equal(weights["model.embed_tokens.weight"], reseeded["model.embed_tokens.weight"])


def test_building_a_model_leaves_the_callers_random_state_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run on an empty cache (which builds its toy models) samples exactly as the same run on a warm one."""
    monkeypatch.setenv("GOPD_HOME", str(tmp_path))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    toy_model_path("child", tiny_world())
    assert torch.equal(torch.get_rng_state(), state)


def test_unrelated_models_build_in_parallel_processes_with_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tiny_world()
    monkeypatch.setenv("GOPD_HOME", str(tmp_path / "parallel"))
    parallel = prepare_toy_world(recipe, ["child", "other"])  # two trees: root -> child, and other
    assert built(tmp_path / "parallel") == ["child", "other", "root"]
    monkeypatch.setenv("GOPD_HOME", str(tmp_path / "in-process"))
    for name, path in parallel.items():
        weights, again = (load_file(p / "model.safetensors") for p in (path, toy_model_path(name, recipe)))
        assert all(torch.equal(weights[key], again[key]) for key in weights), name


def test_a_grpo_recipe_continues_its_parent_in_a_fresh_interpreter_reproducibly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``method="grpo"`` model is the parent after GRPO updates (in a fresh interpreter), the same by seed."""
    recipe = ToyRecipe(
        models={
            "root": ToyModelRecipe(("math",), steps=2, shape=TINY, batch_size=4),
            "rl": ToyModelRecipe(("math",), steps=2, parent="root", method="grpo", batch_size=2, group_size=2),
        }
    )
    sft_only = ToyRecipe(models={"root": recipe.models["root"]})
    assert recipe.digest("root") == sft_only.digest("root")  # GRPO's fields never change an SFT model's folder
    monkeypatch.setenv("GOPD_HOME", str(tmp_path / "a"))
    rl = toy_model_path("rl", recipe)
    weights, parent = (load_file(path / "model.safetensors") for path in (rl, toy_model_path("root", recipe)))
    assert set(weights) == set(parent) and any(not torch.equal(weights[k], parent[k]) for k in weights)
    assert load_tokenizer(str(rl)).get_vocab() == build_tokenizer().get_vocab()
    monkeypatch.setenv("GOPD_HOME", str(tmp_path / "b"))
    again = load_file(toy_model_path("rl", recipe) / "model.safetensors")
    assert all(torch.equal(weights[key], again[key]) for key in weights)


def test_bad_recipes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown toy model 'nope'"):
        tiny_world().lineage("nope")
    with pytest.raises(ValueError, match="exactly one of 'parent'"):
        ToyModelRecipe(("math",), steps=1)
    loop = ToyRecipe(
        models={"a": ToyModelRecipe(("math",), 1, parent="b"), "b": ToyModelRecipe(("math",), 1, parent="a")}
    )
    with pytest.raises(ValueError, match="continues from itself"):
        loop.lineage("a")


# ---------------------------------------------------------------- the real toy world: weak bases, strong experts
@pytest.fixture(scope="module")
def accuracy(toy_models: dict[str, Path]):  # noqa: ANN201 - a cached lookup
    """``accuracy(model, domain)``: held-out accuracy at temperature 1 (256 math / 128 code problems)."""
    cache: dict[tuple[str, str], float] = {}

    def measure(model: str, domain: str) -> float:
        if (model, domain) not in cache:
            path = str(toy_models[model])
            cache[model, domain] = held_out_accuracy(load_causal_lm(path), load_tokenizer(path), domain)
        return cache[model, domain]

    return measure


# base on math stops at 30% of its own held-out set; on code it sits on the plateau (about 10-17%
# over seeds) before its learning onset. The math teachers are GRPO runs, clearly better than their
# base and far from perfect (room above them); the code expert trains long past its onset.
@pytest.mark.parametrize(("domain", "lowest", "gain", "highest"), [("math", 0.15, 0.2, 0.8), ("code", 0.05, 0.4, 1.0)])
def test_base_is_weak_and_each_teacher_clearly_better_on_its_domain(
    accuracy,  # noqa: ANN001
    domain: str,
    lowest: float,
    gain: float,
    highest: float,
) -> None:
    base, teacher = accuracy("base", domain), accuracy(f"teacher-{domain}", domain)
    assert lowest <= base <= 0.5, base
    assert base + gain <= teacher <= highest, (base, teacher)


def test_big_base_beats_base_and_big_teacher_beats_big_base(accuracy) -> None:  # noqa: ANN001
    assert accuracy("big-base", "math") >= accuracy("base", "math") + 0.1
    assert accuracy("big-teacher-math", "math") >= accuracy("big-base", "math") + 0.1


def test_a_grpo_recipe_needs_a_model_to_start_from() -> None:
    with pytest.raises(ValueError, match="GRPO toy model recipe needs a 'parent'"):
        ToyModelRecipe(("math",), 10, shape=ToyModelShape(), method="grpo")


def test_prepared_world_is_reused_and_toy_names_resolve(toy_models: dict[str, Path]) -> None:
    base = toy_models["base"]
    stamp = (base / "model.safetensors").stat().st_mtime_ns
    assert prepare_toy_world() == {name: toy_models[name] for name in DEFAULT_MODELS}
    assert (base / "model.safetensors").stat().st_mtime_ns == stamp
    assert load_tokenizer("toy:base").name_or_path == str(base)
    with pytest.raises(ValueError, match="unknown toy model 'nope'"):
        load_tokenizer("toy:nope")


def test_gopd_toy_prepare_all(toy_models: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    main(["toy", "prepare", "--all"])
    out = capsys.readouterr().out
    assert "toy world ready" in out
    for name, path in toy_models.items():
        assert f"toy:{name}  {path}" in out
