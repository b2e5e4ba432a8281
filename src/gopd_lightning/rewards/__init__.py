"""Scoring model responses: ``score(domain, response, ground_truth) -> float`` in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

from gopd_lightning.rewards.math import score_exact

SCORERS: dict[str, Callable[[str, str], float]] = {"math": score_exact}


def score(domain: str, response: str, ground_truth: str) -> float:
    """1.0 when ``response`` answers correctly, 0.0 otherwise; never raises on model output."""
    scorer = SCORERS.get(domain)
    if scorer is None:
        raise KeyError(f"no scorer for domain {domain!r}; known: {sorted(SCORERS)}")
    try:
        return float(scorer(response, ground_truth))
    except Exception:  # a malformed model output is a wrong answer, never a crash
        return 0.0
