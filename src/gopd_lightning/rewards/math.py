"""Math answers: the last ``\\boxed{...}`` of a response, compared with the gold by math-verify.

The box is extracted by hand (math-verify, given a whole response, merges several boxes into a
set). Plain numbers are compared in-process; anything else goes to math-verify, whose timeouts use
``signal.alarm`` and so must run in a process's main thread: :mod:`gopd_lightning.rewards.pool`
runs those checks in worker processes with a per-check kill as a backstop.
"""

from __future__ import annotations

import re
from fractions import Fraction

BOX = "\\boxed"
BOX_OPENING = re.compile(r"\\boxed *\{")
THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")
"""A number written with thousands separators (``1,234,567.5``): the only commas a plain number may hold."""
MAX_QUICK_DIGITS = 1000
"""Longer numbers go to math-verify (Python refuses int() of more than 4,300 digits)."""


def strip_thinking(response: str) -> str:
    """The text after the last ``</think>`` (the whole response when there is none)."""
    return response.rsplit("</think>", 1)[-1]


def last_boxed(text: str) -> str | None:
    """Content of the last brace-matched ``\\boxed{...}`` in ``text``, or None.

    One pass over the braces (linear in the text, also for thousands of unclosed boxes): a stack
    of open braces, each marked when it opens a box; the box that opened last among those that
    close wins.
    """
    openers = {match.end() - 1 for match in BOX_OPENING.finditer(text)}
    stack: list[int] = []
    best: tuple[int, int] | None = None
    for index, char in enumerate(text):
        if char == "{":
            stack.append(index)
        elif char == "}" and stack:
            start = stack.pop()
            if start in openers and (best is None or start > best[0]):
                best = (start, index)
    return None if best is None else text[best[0] + 1 : best[1]]


def normalize_answer(answer: str) -> str:
    """Whitespace-free form; integers lose leading zeros (AIME writes ``025``)."""
    compact = "".join(answer.split())
    digits = compact.lstrip("+-")
    if digits.isdigit():
        digits = digits.lstrip("0") or "0"
        sign = "-" if compact.startswith("-") and digits != "0" else ""
        return sign + digits
    return compact


def as_number(answer: str) -> Fraction | None:
    """The exact value of a plain decimal or integer answer (``025``, ``-1.50``, ``1,234``), else None.

    Only thousands separators are removed: ``1,2`` is a list, not twelve. Numbers of more than
    ``MAX_QUICK_DIGITS`` digits are left to math-verify.
    """
    compact = "".join(answer.split())
    if "," in compact:
        if not THOUSANDS.fullmatch(compact):
            return None
        compact = compact.replace(",", "")
    if not compact or len(compact) > MAX_QUICK_DIGITS or not compact.lstrip("+-").replace(".", "", 1).isdigit():
        return None
    try:
        return Fraction(compact)
    except (ValueError, ZeroDivisionError):
        return None


def quick_verdict(answer: str | None, ground_truth: str) -> float | None:
    """1.0 / 0.0 when the answer is decided without math-verify, else None.

    No box is wrong; equal normalised strings are right; two plain numbers compare exactly.
    """
    if answer is None:
        return 0.0
    if normalize_answer(answer) == normalize_answer(ground_truth):
        return 1.0
    mine, gold = as_number(answer), as_number(ground_truth)
    if mine is not None and gold is not None:
        return float(mine == gold)
    return None


def verify_with_math_verify(answer: str, ground_truth: str, timeout_s: int = 5) -> float:
    """math-verify's equivalence of two LaTeX answers; call it in a process's main thread."""
    from math_verify import parse, verify

    gold = parse(f"${ground_truth}$", parsing_timeout=timeout_s)
    predicted = parse(f"${answer}$", parsing_timeout=timeout_s)
    if not gold or not predicted:
        return 0.0
    return float(verify(gold, predicted, timeout_seconds=timeout_s))
