"""Scoring model responses: 1.0 means correct, 0.0 wrong; never raises on model output.

- math: the last ``\\boxed{}`` after any ``</think>``, compared with math-verify in worker processes.
- code: the last fenced code block, run in a sandbox and judged outside it (``rewards.code``).

``score`` checks one response; ``score_batch`` checks many in parallel (training rewards and
evaluation use it).
"""

from __future__ import annotations

from collections.abc import Sequence

from gopd_lightning.rewards.math import last_boxed, quick_verdict, strip_thinking, verify_with_math_verify
from gopd_lightning.rewards.pool import run_all

DOMAINS = ("math", "code")
MATH_TIMEOUT_S = 5
MATH_DEADLINE_S = 4 * MATH_TIMEOUT_S  # parse gold + parse answer + verify, and start-up slack


def score(domain: str, response: str, ground_truth: str) -> float:
    """Score one response of ``domain`` against ``ground_truth``."""
    return score_batch([domain], [response], [ground_truth])[0]


def score_batch(domains: Sequence[str], responses: Sequence[str], ground_truths: Sequence[str]) -> list[float]:
    """Score many responses in parallel.

    An unknown domain (KeyError) or an empty ground truth (ValueError) is a data error, not model output.
    """
    unknown = sorted(set(domains) - set(DOMAINS))
    if unknown:
        raise KeyError(f"no scorer for domain(s) {unknown}; scorers exist for {list(DOMAINS)}")
    empty = [i for i, truth in enumerate(ground_truths) if not str(truth).strip()]
    if empty:
        raise ValueError(
            f"ground truth of response {empty[0]} is empty: a data error (rows without an answer are not scored)"
        )
    scores = [0.0] * len(responses)
    math_rows = [i for i, d in enumerate(domains) if d == "math"]
    code_rows = [i for i, d in enumerate(domains) if d == "code"]
    for i, value in zip(
        math_rows, _score_math([responses[i] for i in math_rows], [ground_truths[i] for i in math_rows]), strict=True
    ):
        scores[i] = value
    if code_rows:
        from gopd_lightning.rewards.code import score_code_batch

        values = score_code_batch([responses[i] for i in code_rows], [ground_truths[i] for i in code_rows])
        for i, value in zip(code_rows, values, strict=True):
            scores[i] = value
    return scores


def _score_math(responses: Sequence[str], ground_truths: Sequence[str]) -> list[float]:
    answers = [last_boxed(strip_thinking(r)) for r in responses]
    scores = [quick_verdict(a, g) for a, g in zip(answers, ground_truths, strict=True)]
    undecided = [i for i, s in enumerate(scores) if s is None]
    if undecided:
        checked = run_all(
            verify_with_math_verify,
            [(answers[i], ground_truths[i], MATH_TIMEOUT_S) for i in undecided],
            timeout_s=MATH_DEADLINE_S,
        )
        for i, value in zip(undecided, checked, strict=True):
            scores[i] = value
    return [float(s) for s in scores]
