"""Statistics of a training step's rollout, exact over every rank, overall and per domain.

A ``training_step`` returns its :class:`RolloutStatistics` (``{"loss", "statistics"}``) and the
:class:`~gopd_lightning.callbacks.StepStatistics` callback logs :func:`rollout_statistics` of it.

Each statistic is a mean kept as a (sum, count) pair: token statistics (reverse KL, entropy,
advantage) count the kept response tokens, row statistics (length, truncation, accuracy) count
the rows that have a value (NaN marks a row without one). Ranks exchange the pairs, so the logged
value is the mean over the whole global batch, not rank 0's share of it, and every rank logs the
same keys whatever domains its own rows hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gopd_lightning.rollout import Rollout

Gather = Callable[[Tensor], Tensor]
"""This rank's tensor -> every rank's, stacked on a new first dimension (identity without ranks)."""


@dataclass
class RolloutStatistics:
    """What a training step measured on its rollout, for the logging callback."""

    rollout: Rollout
    tokens: dict[str, Tensor] = field(default_factory=dict)
    """[rows, time] values averaged over the kept response tokens (entropy, reverse KL, advantage)."""
    rows: dict[str, Tensor] = field(default_factory=dict)
    """[rows] values averaged over the rows that have one (NaN: none), e.g. accuracy."""


def rollout_statistics(statistics: RolloutStatistics, gather: Gather) -> dict[str, float]:
    """``{"<domain>/<name>": mean over all ranks}`` of a step, with the response length, its maximum and truncation.

    Per-domain keys come when the ranks hold several domains together (the same keys on every rank).
    """
    rollout = statistics.rollout
    domains = [row["domain"] for row in rollout.rows]
    lengths = rollout.response_lengths.double()
    rows = {**statistics.rows, "response_length": lengths, "truncated": (~rollout.ended).double()}
    return step_statistics(
        domain_groups(domains, domains_on_every_rank(domains)),
        rollout.response_mask,
        statistics.tokens,
        rows,
        {"response_length_max": lengths},
        gather,
    )


def domains_on_every_rank(local: Iterable[str]) -> list[str]:
    """The sorted union of ``local`` domains over all ranks (the same list on every rank)."""
    mine = sorted(set(local))
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return mine
    every = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, mine)
    return sorted(set().union(*every))


def domain_groups(row_domains: Sequence[str], domains: Sequence[str]) -> dict[str, Tensor]:
    """Row masks: "" for every row and, when ``domains`` (the same list on every rank) has several, one per domain."""
    groups = {"": torch.ones(len(row_domains), dtype=torch.bool)}
    if len(domains) > 1:
        for domain in domains:
            groups[domain] = torch.tensor([d == domain for d in row_domains], dtype=torch.bool)
    return groups


def step_statistics(
    groups: Mapping[str, Tensor],
    mask: Tensor,
    token_values: Mapping[str, Tensor],
    row_values: Mapping[str, Tensor],
    row_maxima: Mapping[str, Tensor],
    gather: Gather,
) -> dict[str, float]:
    """``{"<group>/<name>": mean over all ranks}``; a group with nothing to count on any rank is left out.

    ``token_values`` are [rows, time] (averaged over ``mask``), ``row_values`` and ``row_maxima``
    [rows] (averaged over the non-NaN rows, or the maximum).
    """
    keys, sums, counts, max_keys, maxima = [], [], [], [], []
    mask = mask.bool()
    for group, rows in groups.items():
        rows = rows.to(mask.device)
        prefix = f"{group}/" if group else ""
        for name, values in token_values.items():
            kept = mask & rows.unsqueeze(1)
            keys.append(prefix + name)
            sums.append(values.double().masked_fill(~kept, 0).sum())
            counts.append(kept.sum().double())
        for name, values in row_values.items():
            known = rows.to(values.device) & ~values.isnan()
            keys.append(prefix + name)
            sums.append(values.double().masked_fill(~known, 0).sum())
            counts.append(known.sum().double())
        for name, values in row_maxima.items():
            chosen = values.double()[rows.to(values.device)]
            max_keys.append(prefix + name)
            maxima.append(chosen.max() if chosen.numel() else torch.tensor(float("-inf"), dtype=torch.float64))
    device = mask.device
    totals = gather(torch.stack([torch.stack(sums), torch.stack(counts)]).to(device)).reshape(-1, 2, len(keys)).sum(0)
    results = {key: float(total / count) for key, total, count in zip(keys, *totals, strict=True) if count > 0}
    if max_keys:
        peaks = gather(torch.stack(maxima).to(device)).reshape(-1, len(max_keys)).max(dim=0).values
        results.update({key: float(peak) for key, peak in zip(max_keys, peaks, strict=True) if peak > float("-inf")})
    return results
