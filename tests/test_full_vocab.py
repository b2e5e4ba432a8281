"""The exact full-vocabulary G-OPD loss against exact math (float64): its target, its gradient, its optimum."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from gopd_lightning import GOPDModule, UpdateConfig
from gopd_lightning.logprobs import full_vocab_kl_from_hidden, logprobs_from_hidden
from gopd_lightning.models import load_causal_lm
from gopd_lightning.objective import aggregate, full_vocab_loss, policy_gradient_loss, target_logprobs, token_advantages
from gopd_lightning.rollout import generate_rollout
from gopd_lightning.toy.tasks import toy_rows
from gopd_lightning.toy.tokenizer import build_tokenizer
from helpers import full_logits, make_module, run_one_step, save_tiny_model

VOCAB = 7


def log_probs(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5
    return logits.log_softmax(dim=-1)


@pytest.mark.parametrize("lam", [0.5, 1.0, 1.25, 2.0])
def test_the_target_is_the_normalised_geometric_mixture(lam: float) -> None:
    teacher, ref = log_probs(1, (2, 3, VOCAB)), log_probs(2, (2, 3, VOCAB))
    target = target_logprobs(teacher, ref, lam)
    for b in range(2):
        for t in range(3):  # q_v = pi_T(v)^lam * pi_ref(v)^(1 - lam) / Z, written out token by token
            weights = [teacher[b, t, v].exp() ** lam * ref[b, t, v].exp() ** (1 - lam) for v in range(VOCAB)]
            total = sum(weights)
            expected = torch.stack([w / total for w in weights])
            assert torch.allclose(target[b, t].exp(), expected, atol=1e-12, rtol=0)
    assert torch.allclose(target.logsumexp(dim=-1), torch.zeros(2, 3, dtype=torch.float64), atol=1e-12)


def test_lam_one_is_the_teacher_and_needs_no_reference() -> None:
    teacher = log_probs(3, (2, VOCAB))
    assert torch.allclose(target_logprobs(teacher, None, 1.0), teacher, atol=1e-12)
    with pytest.raises(ValueError, match="lam=1.25 needs the reference"):
        target_logprobs(teacher, None, 1.25)


def test_lam_one_with_the_teacher_as_student_gives_zero_loss_and_gradient() -> None:
    theta = torch.randn(2, 4, VOCAB, dtype=torch.float64, requires_grad=True)
    student = theta.log_softmax(dim=-1)
    loss = full_vocab_loss(student, target_logprobs(student.detach(), None, 1.0), torch.ones(2, 4, dtype=torch.bool))
    (grad,) = torch.autograd.grad(loss, theta)
    assert abs(float(loss.detach())) < 1e-15 and grad.abs().max() < 1e-15


@pytest.mark.parametrize("lam", [0.5, 1.5, 2.0])
def test_a_free_categorical_policy_trained_with_it_converges_to_the_target(lam: float) -> None:
    teacher, ref = log_probs(4, (VOCAB,)), log_probs(5, (VOCAB,))
    target = target_logprobs(teacher, ref, lam).reshape(1, 1, VOCAB)
    theta = torch.zeros(VOCAB, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [theta], max_iter=500, tolerance_grad=1e-15, tolerance_change=1e-18, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = full_vocab_loss(theta.log_softmax(-1).reshape(1, 1, VOCAB), target, torch.ones(1, 1, dtype=torch.bool))
        loss.backward()
        return loss

    optimiser.step(closure)
    assert torch.allclose(theta.detach().softmax(-1), target.flatten().exp(), atol=1e-8, rtol=0)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"must be \[batch, time, vocab\]"):
        full_vocab_loss(torch.zeros(2, 3, VOCAB), torch.zeros(2, 3, VOCAB), torch.ones(2, 4))


def response_logprobs_of(model: torch.nn.Module, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """Full-vocabulary log-probs [1, response, V] of each response position's next token, in float64."""
    logits = model(input_ids=ids).logits[:, prompt - 1 : -1]
    return logits.double().log_softmax(dim=-1)


def rms_norm_in_input_dtype(norm: Qwen3RMSNorm, hidden: torch.Tensor) -> torch.Tensor:
    """Qwen3's RMSNorm without its float32 cast."""
    return norm.weight * hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)


@pytest.mark.parametrize("lam", [1.0, 1.25])
def test_its_gradient_is_the_expected_sampled_gradient_on_a_tiny_model(
    tiny_models: dict[str, str], lam: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a response position: grad of the full-vocabulary loss == sum_v pi(v) * grad of the sampled loss at y = v,
    for every parameter, in float64 to 1e-9.

    Qwen3's RMSNorm computes in float32 whatever the weights' dtype; here it keeps float64, so that the
    comparison measures the estimators, not float32 rounding.
    """
    monkeypatch.setattr(Qwen3RMSNorm, "forward", rms_norm_in_input_dtype)
    student = load_causal_lm(tiny_models["student"]).double().eval()
    teacher = load_causal_lm(tiny_models["teacher"]).double().eval()
    ref = load_causal_lm(tiny_models["reference"]).double().eval()
    names, params = zip(*[(name, p) for name, p in student.named_parameters() if p.requires_grad], strict=True)
    prompt, response = 5, 4
    ids = torch.randint(3, 40, (1, prompt + response), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        teacher_logp, ref_logp = response_logprobs_of(teacher, ids, prompt), response_logprobs_of(ref, ids, prompt)
    target = target_logprobs(teacher_logp, ref_logp if lam != 1.0 else None, lam)
    vocab = teacher_logp.shape[-1]
    for position in (0, response - 1):
        mask = torch.zeros(1, response, dtype=torch.bool)
        mask[0, position] = True
        student_logp = response_logprobs_of(student, ids, prompt)  # the logits at `position` do not see y_position
        full = torch.autograd.grad(full_vocab_loss(student_logp, target, mask), params, retain_graph=True)
        probs = student_logp[0, position].detach().exp()
        expected = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        for token in range(vocab):
            chosen = student_logp[..., token]  # as if the student had sampled `token` at every position
            advantage = token_advantages(chosen, teacher_logp[..., token], ref_logp[..., token], lam)
            loss = policy_gradient_loss(chosen, advantage, mask)
            for total, grad in zip(expected, torch.autograd.grad(loss, params, retain_graph=True), strict=True):
                total += probs[token] * grad
        for name, got, want in zip(names, full, expected, strict=True):
            assert torch.allclose(got, want, atol=1e-9, rtol=0), (name, float((got - want).abs().max()))
        assert max(float(g.abs().max()) for g in full) > 1e-4  # a non-trivial case


@pytest.mark.parametrize("lam", [1.0, 1.25])
@pytest.mark.parametrize("chunk_size", [1, 3, 16])
def test_the_chunked_loss_from_hidden_states_is_the_whole_one(lam: float, chunk_size: int) -> None:
    """Chunks of positions (logits never whole) give the loss and the gradients of the materialised computation."""
    torch.manual_seed(0)
    rows, time, dim, vocab = 2, 5, 4, 11
    heads = [torch.nn.Linear(dim, vocab + 3, dtype=torch.float64) for _ in range(3)]  # padded past the vocabulary
    hidden = [torch.randn(rows, time, dim, dtype=torch.float64) for _ in range(3)]
    student_hidden = hidden[0].clone().requires_grad_(True)
    mask = torch.rand(rows, time) > 0.3

    def head_of(linear: torch.nn.Linear):  # noqa: ANN202
        return lambda h: linear(h)[..., :vocab]

    reference = (hidden[2], head_of(heads[2])) if lam != 1.0 else None
    chunked = full_vocab_kl_from_hidden(
        (student_hidden, head_of(heads[0])), (hidden[1], head_of(heads[1])), reference, lam, chunk_size
    )
    loss = aggregate(chunked, mask)
    grads = torch.autograd.grad(loss, [student_hidden, heads[0].weight])

    whole_hidden = hidden[0].clone().requires_grad_(True)
    logp = [head_of(h)(x).log_softmax(-1) for h, x in zip(heads, [whole_hidden, *hidden[1:]], strict=True)]
    whole = full_vocab_loss(logp[0], target_logprobs(logp[1], logp[2] if lam != 1.0 else None, lam), mask)
    whole_grads = torch.autograd.grad(whole, [whole_hidden, heads[0].weight])
    assert torch.allclose(loss, whole, atol=1e-12, rtol=0)
    for got, want in zip(grads, whole_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-12, rtol=0)


def exact_step_loss(module: GOPDModule, student: torch.nn.Module, rollout, lam: float) -> torch.Tensor:  # noqa: ANN001
    """The full-vocabulary loss of one rollout computed by hand: whole logits of every model, each row's own teacher."""
    tokenizer = module.tokenizer
    student_logp = full_logits(student, tokenizer, rollout, grad=True).log_softmax(-1)
    teacher_logp = torch.stack(
        [
            full_logits(module.frozen.teachers[row["domain"]], tokenizer, rollout.select(slice(i, i + 1)))[0]
            for i, row in enumerate(rollout.rows)
        ]
    ).log_softmax(-1)
    ref_logp = student_logp.detach() if lam != 1.0 else None  # the reference is the initial student
    return full_vocab_loss(student_logp, target_logprobs(teacher_logp, ref_logp, lam), rollout.response_mask)


@pytest.mark.parametrize("lam", [1.0, 1.25])
def test_a_full_vocab_step_is_exactly_a_gradient_step_on_the_kl_to_q(tiny_models: dict[str, str], lam: float) -> None:
    teachers = {"math": tiny_models["teacher"], "code": tiny_models["teacher_llama"]}  # two architectures
    module = make_module(
        tiny_models, lam=lam, teachers=teachers, estimator="full_vocab", update=UpdateConfig(max_grad_norm=None)
    )
    data_rows = toy_rows("math", 2) + toy_rows("code", 2)
    trainer, before, rollout = run_one_step(module, rows=data_rows)
    expected = exact_step_loss(module, before, rollout, lam)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(float(expected.detach()), abs=1e-5)
    assert "train/target_kl" in trainer.callback_metrics and "train/advantage" not in trainer.callback_metrics
    grads = torch.autograd.grad(expected, list(before.parameters()))
    for (name, after), start, grad in zip(module.student.named_parameters(), before.parameters(), grads, strict=True):
        assert torch.allclose(after, start - 0.1 * grad, atol=1e-6), name  # SGD, lr 0.1


def test_micro_batches_give_the_full_vocab_update_of_the_whole_batch(tiny_models: dict[str, str]) -> None:
    weights = []
    for micro_batch_size in (None, 1):
        module = make_module(
            tiny_models, estimator="full_vocab", update=UpdateConfig(micro_batch_size=micro_batch_size)
        )
        run_one_step(module)
        weights.append(torch.cat([p.detach().flatten() for p in module.student.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_an_unknown_estimator_is_a_clear_error(tiny_models: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="estimator='exact' is invalid"):
        make_module(tiny_models, estimator="exact")


@pytest.mark.parametrize(
    "options",
    [{}, {"offload_frozen": True}, {"lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}}],
    ids=["plain", "offloaded", "lora-reference"],
)
def test_the_full_vocab_target_sees_what_the_sampled_scoring_sees(
    tiny_models: dict[str, str], tmp_path: Path, options: dict
) -> None:
    """Own chat templates, padded embeddings, offload, a LoRA reference: the sampled scoring's per-token log-probs."""
    if "lora" in options:
        pytest.importorskip("peft")
    tokenizer = build_tokenizer()
    tokenizer.chat_template = "<|im_start|>system\nYou are an expert.<|im_end|>\n" + tokenizer.chat_template
    templated = save_tiny_model(tmp_path / "templated", seed=1, tokenizer=tokenizer)
    padded = save_tiny_model(tmp_path / "padded", seed=4, vocab_size=len(build_tokenizer()) + 9)
    module = make_module(tiny_models, teachers={"math": templated, "code": padded}, lam=1.25, **options)
    module.configure_model()
    module.frozen.park()
    if "lora" in options:
        for name, parameter in module.student.named_parameters():
            if "lora_B" in name:  # make the adapter matter, so the reference (adapter off) differs from the student
                torch.nn.init.normal_(parameter, std=0.5)
    torch.manual_seed(0)
    rows = toy_rows("math", 2) + toy_rows("code", 2)
    rollout = generate_rollout(module.student, module.tokenizer, rows, module.sampling)
    teacher_logp, ref_logp = module.score_frozen(rollout)
    target = module.frozen.full_vocab_target(rollout, module.scorer, module.student, 1.25, every_teacher=False)
    mask = rollout.response_mask
    assert torch.allclose(target.teacher_logp[mask], teacher_logp[mask], atol=1e-5)
    hidden, head = target.reference
    target_ref = logprobs_from_hidden(hidden, head, rollout.response_ids).logp
    assert torch.allclose(target_ref[mask], ref_logp[mask], atol=1e-5)
