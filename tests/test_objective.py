"""The G-OPD objective against exact math on one-token categorical policies (float64)."""

from __future__ import annotations

import pytest
import torch

from gopd_lightning.objective import aggregate, policy_gradient_loss, token_advantages

VOCAB = 6


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5


def exact_objective(theta: torch.Tensor, z_teacher: torch.Tensor, z_ref: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * E_pi[log pi*/pi_ref] - KL(pi || pi_ref), written from the definition."""
    log_pi = torch.log_softmax(theta, -1)
    log_t = torch.log_softmax(z_teacher, -1)
    log_r = torch.log_softmax(z_ref, -1)
    pi = log_pi.exp()
    return lam * (pi * (log_t - log_r)).sum() - (pi * (log_pi - log_r)).sum()


def expected_estimator_gradient(
    theta: torch.Tensor, z_teacher: torch.Tensor, z_ref: torch.Tensor, lam: float, aggregation: str
) -> torch.Tensor:
    """E_{y ~ pi}[-grad loss(y)]: enumerate every token, weight it by its probability."""
    log_t, log_r = torch.log_softmax(z_teacher, -1), torch.log_softmax(z_ref, -1)
    probs = torch.softmax(theta, -1).detach()
    total = torch.zeros_like(theta)
    for y in range(VOCAB):
        theta_y = theta.detach().clone().requires_grad_(True)
        logp = torch.log_softmax(theta_y, -1)[y].reshape(1, 1)
        adv = token_advantages(logp, log_t[y].reshape(1, 1), log_r[y].reshape(1, 1), lam)
        loss = policy_gradient_loss(logp, adv, torch.ones(1, 1, dtype=torch.bool), aggregation=aggregation)
        (grad,) = torch.autograd.grad(-loss, theta_y)
        total += probs[y] * grad
    return total


@pytest.mark.parametrize("lam", [0.5, 1.0, 1.25, 2.0])
@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"])
def test_expected_gradient_equals_gradient_of_exact_objective(lam: float, aggregation: str) -> None:
    for seed in range(3):
        theta = _logits(seed).requires_grad_(True)
        z_teacher, z_ref = _logits(100 + seed), _logits(200 + seed)
        (exact,) = torch.autograd.grad(exact_objective(theta, z_teacher, z_ref, lam), theta)
        estimated = expected_estimator_gradient(theta, z_teacher, z_ref, lam, aggregation)
        assert torch.allclose(estimated, exact, atol=1e-6, rtol=0), (estimated, exact)
        assert exact.abs().max() > 1e-3  # a non-trivial case


def uniform_sampler_gradient(
    theta: torch.Tensor, z_teacher: torch.Tensor, z_ref: torch.Tensor, lam: float
) -> torch.Tensor:
    """The same expectation in one call: every token once, as if a uniform sampler drew it.

    The truncated importance weight pi(y) / (1 / V), uncapped, turns the sequence mean over the V
    tokens into sum_y pi(y) * A(y) * grad log pi(y).
    """
    theta = theta.detach().clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1).unsqueeze(-1)  # V sequences of one token each
    log_t = torch.log_softmax(z_teacher, -1).unsqueeze(-1)
    log_r = torch.log_softmax(z_ref, -1).unsqueeze(-1)
    uniform = torch.full_like(logp, -torch.log(torch.tensor(float(VOCAB), dtype=theta.dtype)))
    loss = policy_gradient_loss(
        logp,
        token_advantages(logp, log_t, log_r, lam),
        torch.ones_like(logp, dtype=torch.bool),
        sampler_logp=uniform,
        is_cap=float("inf"),
    )
    (grad,) = torch.autograd.grad(-loss, theta)
    return grad


def test_uniform_sampler_importance_weights_give_the_on_policy_expectation() -> None:
    theta, z_teacher, z_ref = _logits(7), _logits(8), _logits(9)
    expected = expected_estimator_gradient(theta, z_teacher, z_ref, 1.25, "seq-mean-token-mean")
    assert torch.allclose(uniform_sampler_gradient(theta, z_teacher, z_ref, 1.25), expected, atol=1e-12)


@pytest.mark.parametrize("lam", [0.5, 1.0, 1.25, 2.0])
def test_gradient_ascent_converges_to_closed_form_optimum(lam: float) -> None:
    z_teacher, z_ref = _logits(1), _logits(2)
    theta = torch.zeros(VOCAB, dtype=torch.float64)
    for _ in range(20000):
        theta = theta + 2.0 * uniform_sampler_gradient(theta, z_teacher, z_ref, lam)
    # the optimum pi ~ pi_ref^(1 - lam) * pi_teacher^lam, from the normalised log-probs
    optimum = torch.softmax(lam * torch.log_softmax(z_teacher, -1) + (1 - lam) * torch.log_softmax(z_ref, -1), -1)
    assert torch.allclose(torch.softmax(theta, -1), optimum, atol=1e-6, rtol=0)


def test_lam_one_ignores_the_reference() -> None:
    student, teacher = torch.randn(3, 5), torch.randn(3, 5)
    without = token_advantages(student, teacher, None, lam=1.0)
    for ref in (torch.randn(3, 5), torch.full((3, 5), -100.0)):
        assert torch.equal(token_advantages(student, teacher, ref, lam=1.0), without)
    assert torch.allclose(without, teacher - student)


def test_lam_not_one_needs_a_reference() -> None:
    with pytest.raises(ValueError, match="ref_logp"):
        token_advantages(torch.zeros(1, 1), torch.zeros(1, 1), None, lam=1.25)


@pytest.mark.parametrize("lam", [0.5, 1.0, 1.25, 2.0])
def test_identical_models_give_exactly_zero_advantage(lam: float) -> None:
    logp = torch.log_softmax(torch.randn(4, 7, 11), -1)[..., 0]
    assert torch.equal(token_advantages(logp, logp.clone(), logp.clone(), lam), torch.zeros_like(logp))


def test_advantage_formula_by_hand() -> None:
    student, teacher, ref = torch.tensor([[-1.0]]), torch.tensor([[-0.5]]), torch.tensor([[-2.0]])
    # 1.25 * (-0.5 + 2.0) - (-1.0 + 2.0) = 1.875 - 1.0
    assert token_advantages(student, teacher, ref, 1.25).item() == pytest.approx(0.875)
    # same value in the paper's second form: (t - s) + (lam - 1) * (t - r) = 0.5 + 0.25 * 1.5
    assert token_advantages(student, teacher, ref, 1.25).item() == pytest.approx(0.5 + 0.25 * 1.5)


def test_masked_tokens_contribute_nothing() -> None:
    logp = torch.randn(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    adv = torch.randn(2, 4)
    loss = policy_gradient_loss(logp, adv, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.all(grad[~mask] == 0)
    changed = adv.clone()
    changed[~mask] = 1e6
    assert torch.equal(policy_gradient_loss(logp, changed, mask), loss)


def test_aggregations_by_hand() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    assert aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate(values, mask, "token-mean").item() == pytest.approx(10.0 / 4)
    assert aggregate(values, mask, "seq-mean-token-sum").item() == pytest.approx((6.0 + 4.0) / 2)
    empty_row = torch.tensor([[1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    assert aggregate(values, empty_row, "seq-mean-token-mean").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(values, mask, "sum")


def test_loss_value_is_minus_mean_advantage_on_policy() -> None:
    logp = torch.randn(2, 3)
    adv = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 5.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    assert policy_gradient_loss(logp, adv, mask).item() == pytest.approx(-(2.0 + 2.0) / 2)


def test_ppo_clip_stops_the_gradient_outside_the_trust_region() -> None:
    old = torch.zeros(1, 2)
    logp = torch.tensor([[0.5, -0.5]], requires_grad=True)  # ratios e^0.5 > 1.2 and e^-0.5 < 0.8
    mask = torch.ones(1, 2, dtype=torch.bool)
    (grad,) = torch.autograd.grad(
        policy_gradient_loss(logp, torch.tensor([[1.0, -1.0]]), mask, old, clip_eps=0.2), logp
    )
    assert torch.all(grad == 0)  # raising a good token / lowering a bad one beyond the clip: no push
    (grad,) = torch.autograd.grad(
        policy_gradient_loss(logp, torch.tensor([[-1.0, 1.0]]), mask, old, clip_eps=0.2), logp
    )
    assert torch.all(grad != 0)  # the pessimistic side is never clipped away


def test_truncated_importance_weight() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    sampler = torch.log(torch.tensor([[0.25, 0.01]]))  # weights 2 and 50 -> capped at 5
    mask = torch.ones(1, 2, dtype=torch.bool)
    adv = torch.ones(1, 2)
    loss = policy_gradient_loss(logp, adv, mask, sampler_logp=sampler, is_cap=5.0)
    assert loss.item() == pytest.approx(-(2.0 + 5.0) / 2)


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="same shape"):
        policy_gradient_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))
