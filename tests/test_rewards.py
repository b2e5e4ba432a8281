"""Answer extraction and the math scorer."""

from __future__ import annotations

import pytest

from gopd_lightning.rewards import score
from gopd_lightning.rewards.math import last_boxed, normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed {7}", "7"),
        ("\\boxed{unclosed", None),
        ("\\boxed{3} and \\boxed{open", "3"),
        ("no box", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


def test_normalisation() -> None:
    assert normalize_answer(" 025 ") == "25"
    assert normalize_answer("-0") == "0"
    assert normalize_answer("1 / 2") == "1/2"


def test_score_math() -> None:
    assert score("math", "<think>\\boxed{1}</think> \\boxed{068}", "68") == 1.0
    assert score("math", "\\boxed{68}</think> nothing boxed", "68") == 0.0
    assert score("math", "\\boxed{67}", "68") == 0.0
    with pytest.raises(KeyError, match="no scorer for domain 'poetry'"):
        score("poetry", "x", "y")
