"""Answer extraction and the math scorer."""

from __future__ import annotations

import time

import pytest

from gopd_lightning.rewards import score, score_batch
from gopd_lightning.rewards.math import last_boxed, normalize_answer
from gopd_lightning.rewards.pool import WorkerPool, run_all


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
    with pytest.raises(KeyError, match=r"no scorer for domain\(s\) \['poetry'\]"):
        score("poetry", "x", "y")


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("\\frac{1}{2}", "0.5", 1.0),
        ("336", "336^\\circ", 1.0),
        ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", 1.0),
        ("2\\pi", "2 \\pi", 1.0),
        ("(1, 2)", "(1,2)", 1.0),
        ("\\frac{1}{3}", "0.5", 0.0),
        ("x^2", "x^3", 0.0),
    ],
)
def test_math_verify_equivalence(answer: str, gold: str, expected: float) -> None:
    assert score("math", f"Long reasoning... so the answer is \\boxed{{{answer}}}.", gold) == expected


def test_batch_scoring_keeps_order_and_mixes_quick_and_verified() -> None:
    responses = ["\\boxed{12}", "\\boxed{\\frac{6}{12}}", "nothing", "\\boxed{13}", "\\boxed{0.5}"]
    golds = ["012", "1/2", "3", "12", "\\frac12"]
    assert score_batch(["math"] * 5, responses, golds) == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_a_hung_check_is_killed_and_scored_zero() -> None:
    started = time.monotonic()
    assert run_all(time.sleep, [(60,), (0,)], timeout_s=2) == [0.0, 0.0]  # sleep returns None -> failure too
    assert time.monotonic() - started < 30
    assert run_all(abs, [(-1.0,)], timeout_s=10) == [1.0]  # the pool recovers after the kill


def test_a_closed_pool_leaves_no_open_pipes() -> None:
    pool = WorkerPool(2)
    assert pool.run("builtins:abs", [-2], timeout_s=30) == 2
    with pytest.raises(TimeoutError):
        pool.run("time:sleep", [60], timeout_s=0.5)  # this worker is killed and replaced
    pool.close()
    for worker in pool.every:  # an open pipe at exit is a ResourceWarning in every user's log
        assert worker.process.stdin.closed and worker.process.stdout.closed


UNGUARDED = """
from pathlib import Path
with Path({log!r}).open("a") as log:
    log.write("ran\\n")
from gopd_lightning.rewards import score_batch
print("scores", score_batch(["math"], ["\\\\boxed{{x^2}}"], ["x*x"]))
"""


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_scoring_never_runs_the_users_code_again(how: str, tmp_path) -> None:  # noqa: ANN001
    """An unguarded script (no ``if __name__ == "__main__"``) and ``python -`` score symbolic answers."""
    import subprocess
    import sys

    log = tmp_path / "runs.log"
    code = UNGUARDED.format(log=str(log))
    script = tmp_path / "user_script.py"
    script.write_text(code)
    args = [sys.executable, str(script)] if how == "script" else [sys.executable, "-"]
    done = subprocess.run(
        args, input=None if how == "script" else code, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "scores [1.0]" in done.stdout  # a symbolic answer: checked by math-verify in a worker
    assert log.read_text() == "ran\n"  # the user's code ran once: in the user's process only


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("1,2", "12", 0.0),  # a list, not twelve
        ("2, 3", "23", 0.0),
        ("1,234", "1234", 1.0),  # a thousands separator
        ("-1,234,567.50", "-1234567.5", 1.0),
        ("12,34", "1234", 0.0),
    ],
)
def test_only_thousands_separators_are_stripped(answer: str, gold: str, expected: float) -> None:
    assert score("math", f"\\boxed{{{answer}}}", gold) == expected


def test_huge_integers_never_raise() -> None:
    huge = "9" * 5000
    assert score("math", f"\\boxed{{{huge}}}", huge) == 1.0
    assert score("math", f"\\boxed{{{huge}}}", "7") == 0.0
    assert normalize_answer("000" + huge) == huge


def test_finding_the_last_box_is_linear_in_unclosed_boxes() -> None:
    text = "\\boxed{" * 8000 + " \\boxed{7}"
    started = time.monotonic()
    assert last_boxed(text) == "7"
    assert last_boxed("\\boxed{" * 8000) is None
    assert time.monotonic() - started < 1.0  # the quadratic scan took minutes
    assert last_boxed("\\boxed{\\boxed{1}} and \\boxed {2} then \\boxed{3") == "2"


def test_an_empty_ground_truth_is_a_data_error() -> None:
    with pytest.raises(ValueError, match="ground truth of response 0 is empty"):
        score("math", "\\boxed{}", "")
