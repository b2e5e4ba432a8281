"""Math answers: the last ``\\boxed{...}`` of a response, brace-matched, and its comparison."""

from __future__ import annotations

BOX = "\\boxed"


def strip_thinking(response: str) -> str:
    """The text after the last ``</think>`` (the whole response when there is none)."""
    return response.rsplit("</think>", 1)[-1]


def last_boxed(text: str) -> str | None:
    """Content of the last brace-matched ``\\boxed{...}`` in ``text``, or None.

    Done by hand because answer checkers that parse every box merge several boxes into a set.
    """
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


def score_exact(response: str, ground_truth: str) -> float:
    """1.0 when the last boxed answer equals ``ground_truth`` after normalisation, else 0.0."""
    answer = last_boxed(strip_thinking(response))
    if answer is None:
        return 0.0
    return float(normalize_answer(answer) == normalize_answer(ground_truth))
