"""avg@k and unbiased pass@k against brute-force enumeration; the results table."""

from __future__ import annotations

import itertools
import json
from math import comb
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gopd_lightning.callbacks import BenchmarkAccuracy
from gopd_lightning.metrics import BenchmarkScores, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of the n samples that contain at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 0, 1), (4, 1, 1), (4, 1, 2), (6, 2, 3), (8, 3, 4), (8, 8, 8), (5, 0, 5)])
def test_pass_at_k_equals_enumeration(n: int, c: int, k: int) -> None:
    got = pass_at_k(torch.tensor([n]), torch.tensor([c]), k).item()
    assert got == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
    assert got == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_scores_per_benchmark_domain_and_overall() -> None:
    metric = BenchmarkScores(pass_k=[1, 2])
    # aime: problems with 1/4 and 3/4 correct; humaneval: one problem 0/4
    metric.update(
        ["aime", "aime"], ["math", "math"], torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]]), torch.full((2, 4), 10)
    )
    metric.update(["humaneval"], ["code"], torch.tensor([[0, 0, 0, 0]]), torch.full((1, 4), 40))
    results = {k: float(v) for k, v in metric.compute().items()}
    assert results["benchmark/aime/accuracy"] == pytest.approx(0.5)
    assert results["benchmark/aime/pass@2"] == pytest.approx((0.5 + 1.0) / 2)  # 1-C(3,2)/C(4,2), 1-C(1,2)/C(4,2)
    assert results["domain/code/accuracy"] == 0.0 and results["domain/code/response_length"] == 40.0
    assert results["accuracy"] == pytest.approx((0.25 + 0.75 + 0.0) / 3)
    assert results["pass@1"] == pytest.approx(results["accuracy"])  # pass@1 is avg@k
    assert results["response_length"] == pytest.approx((80 + 160) / 12)
    assert results["problems"] == 3


def test_records_from_two_ranks_merge_into_the_same_table() -> None:
    whole, rank0, rank1 = BenchmarkScores([2]), BenchmarkScores([2]), BenchmarkScores([2])
    a = (["b1", "b2"], ["math", "code"], torch.tensor([[1, 0], [1, 1]]), torch.tensor([[3, 5], [7, 9]]))
    b = (["b1"], ["math"], torch.tensor([[0, 0]]), torch.tensor([[2, 2]]))
    whole.update(*a)
    whole.update(*b)
    rank0.update(*a)
    rank1.update(*b)
    rank0.merge_state(rank1)
    expected, merged = whole.compute(), rank0.compute()
    assert expected.keys() == merged.keys()
    assert all(torch.allclose(expected[k].double(), merged[k].double()) for k in expected)


def test_results_table_files(tmp_path: Path) -> None:
    results = {"test/accuracy": 0.5, "test/problems": 3.0, "test/benchmark/aime/accuracy": 0.25, "test/pass@4": 0.75}
    callback = BenchmarkAccuracy()
    callback.results["test"] = results  # what the end of the test epoch logged
    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False, log_dir=str(tmp_path), global_step=7)
    callback.on_test_end(trainer, SimpleNamespace())
    payload = json.loads((tmp_path / "results-test.json").read_text())
    assert payload["results"] == {
        "all": {"accuracy": 0.5, "problems": 3.0, "pass@4": 0.75},
        "benchmark/aime": {"accuracy": 0.25},
    }
    table = (tmp_path / "results-test.md").read_text().splitlines()
    assert table[2] == "| group | problems | accuracy | pass@4 |"
    assert table[4] == "| all | 3 | 0.5000 | 0.7500 |" and table[5] == "| benchmark/aime |  | 0.2500 |  |"
