"""Benchmark metrics that are right across ranks: avg@k and unbiased pass@k per benchmark and domain.

Every problem's k samples are generated together on one rank, so each update adds one record per
problem (its benchmark, domain, samples, correct samples, summed response length). Records are
concatenated across ranks by torchmetrics before ``compute``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def pass_at_k(samples: Tensor, correct: Tensor, k: int) -> Tensor:
    """Unbiased pass@k per problem: ``1 - C(n - c, k) / C(n, k)`` (Chen et al., 2021), stably."""
    n, c = samples.double(), correct.double()
    result = torch.ones_like(n)
    can_fail = n - c >= k
    # C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)
    for row in can_fail.nonzero().flatten().tolist():
        i = torch.arange(int(n[row] - c[row]) + 1, int(n[row]) + 1, dtype=torch.float64)
        result[row] = 1.0 - torch.prod(1.0 - k / i)
    return result


def _key(name: str) -> int:
    return zlib.crc32(name.encode())


class BenchmarkScores(Metric):
    """Per-problem records -> {"<group>/accuracy", "<group>/pass@k", "<group>/response_length"}.

    Groups are "" (everything), ``benchmark/<name>`` and ``domain/<name>``. ``accuracy`` is
    avg@k: the mean over problems of the fraction of correct samples (the paper's avg@32 for math,
    pass@1 over 4 samples for code).
    """

    full_state_update = False

    def __init__(self, pass_k: Sequence[int] = ()) -> None:
        super().__init__()
        self.pass_k = tuple(pass_k)
        self.names: dict[int, str] = {}
        for state in ("benchmark", "domain", "samples", "correct", "length_sum"):
            self.add_state(state, default=[], dist_reduce_fx="cat")

    def update(self, benchmarks: Sequence[str], domains: Sequence[str], correct: Tensor, lengths: Tensor) -> None:
        """Add problems: ``correct`` and ``lengths`` are [problems, samples] per problem."""
        for name in (*benchmarks, *domains):
            self.names[_key(name)] = name
        self.benchmark.append(torch.tensor([_key(b) for b in benchmarks], dtype=torch.long, device=self.device))
        self.domain.append(torch.tensor([_key(d) for d in domains], dtype=torch.long, device=self.device))
        self.samples.append(torch.full((len(benchmarks),), correct.shape[1], dtype=torch.long, device=self.device))
        self.correct.append(correct.sum(dim=1).long().to(self.device))
        self.length_sum.append(lengths.sum(dim=1).double().to(self.device))

    def compute(self) -> dict[str, Tensor]:
        if len(self.samples) == 0:  # a list before a cross-rank sync, one tensor after it
            return {}
        benchmark, domain = dim_zero_cat(self.benchmark), dim_zero_cat(self.domain)
        samples, correct, length_sum = (dim_zero_cat(s) for s in (self.samples, self.correct, self.length_sum))
        groups = {"": torch.ones_like(samples, dtype=torch.bool)}
        for kind, keys in (("benchmark", benchmark), ("domain", domain)):
            for key in keys.unique().tolist():
                groups[f"{kind}/{self.names.get(key, key)}"] = keys == key
        results = {}
        for group, rows in groups.items():
            prefix = f"{group}/" if group else ""
            n, c = samples[rows], correct[rows]
            results[prefix + "accuracy"] = (c.double() / n).mean()
            results[prefix + "response_length"] = length_sum[rows].sum() / n.sum()
            results[prefix + "problems"] = torch.tensor(float(rows.sum()))
            for k in self.pass_k:
                if k <= int(n.min()):
                    results[prefix + f"pass@{k}"] = pass_at_k(n, c, k).mean()
        return results
