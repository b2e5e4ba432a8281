"""The paper's method on tiny models: routing by domain, reward correction, LoRA reference,
teacher chat templates and padded vocabularies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gopd_lightning import GOPDModule, SamplingConfig, policy
from gopd_lightning.callbacks import StepStatistics
from gopd_lightning.data import DataSource, PromptDataModule
from gopd_lightning.data.datamodule import prompt_lengths
from gopd_lightning.models import load_causal_lm, load_tokenizer
from gopd_lightning.objective import token_advantages
from gopd_lightning.rollout import encode_prompts, generate_rollout
from gopd_lightning.scoring import response_logprobs
from gopd_lightning.step_stats import RolloutStatistics
from gopd_lightning.toy.tasks import toy_rows
from gopd_lightning.toy.tokenizer import build_tokenizer
from helpers import make_module, make_trainer, save_tiny_model


def built(models: dict[str, str], **overrides) -> GOPDModule:
    module = make_module(models, **overrides)
    module.configure_model()
    return module


def direct_logprobs(path: str, rollout, tokenizer=None) -> torch.Tensor:
    """Log-probs of the rollout's responses under the model at ``path``, computed by hand."""
    model = load_causal_lm(path)
    tokenizer = tokenizer or load_tokenizer(path)
    prompts = encode_prompts(tokenizer, rollout.rows)
    ids = torch.cat([prompts["input_ids"], rollout.response_ids], dim=1)
    mask = torch.cat([prompts["attention_mask"], rollout.response_mask.long()], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
    logits = logits[:, prompts["input_ids"].shape[1] - 1 : -1, : len(tokenizer)].float()
    return torch.log_softmax(logits, -1).gather(-1, rollout.response_ids.unsqueeze(-1)).squeeze(-1)


def test_each_rows_advantage_uses_its_own_domains_teacher(tiny_models: dict[str, str]) -> None:
    module = built(tiny_models, teachers={"math": tiny_models["teacher"], "code": tiny_models["teacher_llama"]})
    rows = toy_rows("math", 2) + [{**row, "domain": "code"} for row in toy_rows("math", 2, seed=1)]
    torch.manual_seed(0)
    rollout = generate_rollout(module.student, module.tokenizer, rows, module.sampling)
    teacher_logp, ref_logp = module.score_frozen(rollout)
    student_logp, _, _ = module.student_logprobs(rollout)
    advantages = token_advantages(student_logp, teacher_logp, ref_logp, 1.25)
    mask = rollout.response_mask
    for rows_of, path in (([0, 1], tiny_models["teacher"]), ([2, 3], tiny_models["teacher_llama"])):
        own = direct_logprobs(path, rollout)[rows_of]
        ref = direct_logprobs(tiny_models["student"], rollout)[rows_of]  # default reference: initial student
        expected = 1.25 * (own - ref) - (student_logp[rows_of] - ref)
        assert torch.allclose(advantages[rows_of][mask[rows_of]], expected[mask[rows_of]], atol=1e-4)


def test_reward_correction_changes_the_advantage_exactly_as_the_formula_says(tiny_models: dict[str, str]) -> None:
    lam = 1.25
    default = built(tiny_models, lam=lam)
    corrected = built(tiny_models, lam=lam, reference=tiny_models["reference"])  # the teacher's pre-RL base
    torch.manual_seed(0)
    rollout = generate_rollout(default.student, default.tokenizer, toy_rows("math", 4), default.sampling)
    student_logp, _, _ = default.student_logprobs(rollout)
    teacher, ref_default = default.score_frozen(rollout)
    teacher_again, ref_base = corrected.score_frozen(rollout)
    assert torch.equal(teacher, teacher_again)
    mask = rollout.response_mask
    assert torch.allclose(ref_base[mask], direct_logprobs(tiny_models["reference"], rollout)[mask], atol=1e-4)
    difference = token_advantages(student_logp, teacher, ref_base, lam) - token_advantages(
        student_logp, teacher, ref_default, lam
    )
    # A = lam * t - s + (1 - lam) * r: swapping the reference moves A by (1 - lam) * (r_base - r_default)
    assert torch.allclose(difference[mask], ((1 - lam) * (ref_base - ref_default))[mask], atol=1e-5)
    assert difference[mask].abs().max() > 1e-3


def test_lora_reference_is_the_base_model_with_the_adapter_disabled(tiny_models: dict[str, str]) -> None:
    pytest.importorskip("peft")
    module = built(tiny_models, lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    assert module.frozen.reference is None  # no second copy of the weights
    for name, parameter in module.student.named_parameters():
        if "lora_B" in name:  # LoRA starts as a no-op; make the adapter matter
            torch.nn.init.normal_(parameter, std=0.5)
    torch.manual_seed(0)
    rollout = generate_rollout(module.student, module.tokenizer, toy_rows("math", 3), module.sampling)
    _, ref_logp = module.score_frozen(rollout)
    student_logp, _, _ = module.student_logprobs(rollout)
    base = direct_logprobs(tiny_models["student"], rollout)
    mask = rollout.response_mask
    assert torch.allclose(ref_logp[mask], base[mask], atol=1e-4)
    assert not torch.allclose(student_logp[mask], base[mask], atol=1e-3)
    trainable = [p for p in module.student.parameters() if p.requires_grad]
    optimised = module.configure_optimizers().param_groups[0]["params"]
    assert len(optimised) == len(trainable) and all(p.requires_grad for p in optimised)


def test_teacher_scores_after_its_own_chat_template(tiny_models: dict[str, str], tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    tokenizer.chat_template = "<|im_start|>system\nYou are an expert.<|im_end|>\n" + tokenizer.chat_template
    teacher = save_tiny_model(tmp_path / "templated", seed=1, tokenizer=tokenizer)
    module = built(tiny_models, lam=1.0, teachers={"math": teacher})
    torch.manual_seed(0)
    rollout = generate_rollout(module.student, module.tokenizer, toy_rows("math", 3), module.sampling)
    teacher_logp, _ = module.score_frozen(rollout)
    mask = rollout.response_mask
    own = direct_logprobs(teacher, rollout, load_tokenizer(teacher))
    plain = direct_logprobs(teacher, rollout, load_tokenizer(tiny_models["student"]))
    assert torch.allclose(teacher_logp[mask], own[mask], atol=1e-4)
    assert not torch.allclose(teacher_logp[mask], plain[mask], atol=1e-3)


def test_padded_embeddings_are_sliced_to_the_shared_vocabulary(tiny_models: dict[str, str], tmp_path: Path) -> None:
    padded = save_tiny_model(tmp_path / "padded", seed=1, vocab_size=len(build_tokenizer()) + 27)
    module = built(tiny_models, lam=1.0, student=padded, teachers={"math": tiny_models["teacher"]})
    torch.manual_seed(0)
    rollout = generate_rollout(module.student, module.tokenizer, toy_rows("math", 8), SamplingConfig(max_new_tokens=8))
    assert int(rollout.response_ids.max()) < len(module.tokenizer)  # padded ids are never sampled
    student_logp, _, _ = module.student_logprobs(rollout)
    mask = rollout.response_mask
    assert torch.allclose(student_logp[mask], direct_logprobs(padded, rollout)[mask], atol=1e-4)
    full, _, _ = response_logprobs(
        module.student, rollout.input_ids, rollout.attention_mask, rollout.response_ids.shape[1]
    )
    assert not torch.allclose(full[mask], student_logp[mask], atol=1e-4)  # the slice matters


def test_offloaded_teachers_give_the_same_scores(tiny_models: dict[str, str]) -> None:
    plain, offloaded = built(tiny_models), built(tiny_models, offload_frozen=True)
    torch.manual_seed(0)
    rollout = generate_rollout(plain.student, plain.tokenizer, toy_rows("math", 3), plain.sampling)
    for a, b in zip(plain.score_frozen(rollout), offloaded.score_frozen(rollout), strict=True):
        assert torch.equal(a, b)
    assert next(offloaded.frozen.teachers["math"].parameters()).device.type == "cpu"


def test_chat_template_kwargs_reach_every_rendered_prompt(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    tokenizer.chat_template += "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
    student = save_tiny_model(tmp_path / "thinking", seed=0, tokenizer=tokenizer)
    off = {"enable_thinking": False}
    module = built({"student": student, "teacher": student}, lam=1.0, chat_template_kwargs=off)
    rows = toy_rows("math", 20)
    rollout = module.rollout(rows[:2], module.sampling)
    prompt = module.tokenizer.decode(rollout.input_ids[0, : rollout.prompt_length])
    assert prompt.endswith("<think></think>")

    # the DataModule's length filter renders prompts the same way
    plain = prompt_lengths(tokenizer, rows)
    assert prompt_lengths(tokenizer, rows, off) == [n + len("<think></think>") for n in plain]
    limit = min(plain) + len("<think></think>")  # every plain prompt fits; with the kwargs, the shortest only
    kept = {}
    for name, kwargs in (("plain", None), ("off", off)):
        data = PromptDataModule(
            train=[DataSource("toy:math", limit=20)],
            tokenizer=student,
            max_prompt_length=limit,
            chat_template_kwargs=kwargs,
        )
        data.setup("fit")
        kept[name] = len(data.datasets["train"])
    assert kept == {"plain": 20, "off": plain.count(min(plain))} and kept["off"] < 20


def test_training_accuracy_scores_each_row_once_and_skips_rows_without_answers(
    tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = tiny_models["teacher"]
    module = built(tiny_models, lam=1.0, teachers={"math": teacher, "code": teacher})
    unanswered = {**toy_rows("math", 3)[2], "id": "no-answer", "ground_truth": ""}
    rows = toy_rows("math", 2) + toy_rows("code", 2) + [unanswered]
    rollout = generate_rollout(module.student, module.tokenizer, rows, module.sampling)
    scored: list[list[str]] = []

    def fake_score_batch(domains: list[str], texts: list[str], truths: list[str]) -> list[float]:
        scored.append(list(domains))
        return [1.0 if domain == "code" else 0.0 for domain in domains]

    logged: dict[str, float] = {}
    monkeypatch.setattr(policy, "score_batch", fake_score_batch)
    monkeypatch.setattr(module, "log", lambda name, value, **_: logged.__setitem__(name, float(value)))
    zeros = torch.zeros(rollout.response_ids.shape)
    statistics = RolloutStatistics(rollout, {"entropy": zeros}, {"accuracy": module.accuracy(rollout)})
    StepStatistics().on_train_batch_end(make_trainer(), module, {"statistics": statistics}, rows, 0)
    assert scored == [["math", "math", "code", "code"]]  # one sandbox/math-verify pass per step
    assert logged["train/code/accuracy"] == 1.0 and logged["train/math/accuracy"] == 0.0  # math: 0 of 2 answered
    assert logged["train/accuracy"] == 0.5  # the row without an answer counts nowhere
