"""Chunked fp32 log-probs and entropy equal the naive full-vocabulary computation."""

from __future__ import annotations

import pytest
import torch

from gopd_lightning.logprobs import logprobs_from_hidden, logprobs_from_logits


def naive(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp_all = torch.log_softmax(logits.float(), -1)
    return logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logits_equal_naive(chunk_size: int, dtype: torch.dtype) -> None:
    logits = (torch.randn(3, 10, 50) * 3).to(dtype)
    targets = torch.randint(0, 50, (3, 10))
    logp, entropy, _ = logprobs_from_logits(logits, targets, chunk_size)
    expected_logp, expected_entropy = naive(logits, targets)
    assert logp.dtype == torch.float32 and entropy.dtype == torch.float32
    assert torch.allclose(logp, expected_logp, atol=1e-5)
    assert torch.allclose(entropy, expected_entropy, atol=1e-5)


def test_hidden_path_equals_naive_in_value_and_gradient() -> None:
    head = torch.nn.Linear(16, 40, bias=False)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    targets = torch.randint(0, 40, (2, 9))
    logp, entropy, _ = logprobs_from_hidden(hidden, head, targets, chunk_size=4)
    expected_logp, expected_entropy = naive(head(hidden), targets)
    assert torch.allclose(logp, expected_logp, atol=1e-5)
    assert torch.allclose(entropy, expected_entropy, atol=1e-5)
    assert not entropy.requires_grad
    weights = torch.randn(2, 9)
    grads = torch.autograd.grad((logp * weights).sum(), [hidden, head.weight])
    expected = torch.autograd.grad((expected_logp * weights).sum(), [hidden, head.weight])
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_mismatched_shapes_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="disagree"):
        logprobs_from_hidden(torch.randn(2, 5, 4), torch.nn.Identity(), torch.zeros(2, 4, dtype=torch.long))
