"""Math answers: the last ``\\boxed{...}`` of a response, compared with the gold by math-verify.

The box is extracted by hand (math-verify, given a whole response, merges several boxes into a
set). Plain numbers are compared in-process; anything else goes to math-verify, whose timeouts use
``signal.alarm`` and so must run in a process's main thread: :mod:`gopd_lightning.rewards.pool`
runs those checks in worker processes with a per-check kill as a backstop.
"""

from __future__ import annotations

from fractions import Fraction

BOX = "\\boxed"


def strip_thinking(response: str) -> str:
    """The text after the last ``</think>`` (the whole response when there is none)."""
    return response.rsplit("</think>", 1)[-1]


def last_boxed(text: str) -> str | None:
    """Content of the last brace-matched ``\\boxed{...}`` in ``text``, or None."""
    start = text.rfind(BOX)
    while start != -1:
        cursor = start + len(BOX)
        while cursor < len(text) and text[cursor] == " ":
            cursor += 1
        if cursor < len(text) and text[cursor] == "{":
            depth = 0
            for end in range(cursor, len(text)):
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                if depth == 0:
                    return text[cursor + 1 : end]
        start = text.rfind(BOX, 0, start)
    return None


def normalize_answer(answer: str) -> str:
    """Whitespace-free form; integers lose leading zeros (AIME writes ``025``)."""
    compact = "".join(answer.split())
    digits = compact.lstrip("+-")
    if digits.isdigit():
        sign = "-" if compact.startswith("-") and int(digits) != 0 else ""
        return sign + str(int(digits))
    return compact


def as_number(answer: str) -> Fraction | None:
    """The exact value of a plain decimal or integer answer (``025``, ``-1.50``), else None."""
    compact = "".join(answer.split()).replace(",", "")
    try:
        return Fraction(compact) if compact and compact.lstrip("+-").replace(".", "", 1).isdigit() else None
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
