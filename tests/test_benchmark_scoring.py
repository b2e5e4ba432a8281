"""The real benchmark files through the real scorers: golds score 1, wrong answers 0.

Skips when ../shared/data (the benchmark copies) is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gopd_lightning.data import load_benchmark
from gopd_lightning.rewards import score_batch
from gopd_lightning.rewards.math import verify_with_math_verify
from gopd_lightning.rewards.pool import run_all

DATA = Path(__file__).parents[2] / "shared" / "data" / "benchmarks"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/benchmarks is absent")
MATH_FILES = {
    "aime24": "aime24.parquet",
    "aime25": "aime25.parquet",
    "hmmt25_feb": "hmmt_feb_2025.jsonl",
    "math500": "math500.json",
}
REASONING = "<think>\nLet me try \\boxed{0} first... no.\n</think>\n" + "We expand and simplify. " * 200


@pytest.mark.parametrize("name", sorted(MATH_FILES))
def test_math_golds_score_one_and_wrong_answers_zero(name: str) -> None:
    rows = load_benchmark(name, path=str(DATA / MATH_FILES[name])).to_list()
    golds = [row["ground_truth"] for row in rows]
    right = [f"{REASONING}So the answer is \\boxed{{{gold}}}." for gold in golds]
    wrong = [f"{REASONING}So the answer is \\boxed{{-98765.4321}}." for _ in golds]
    assert score_batch(["math"] * len(rows), right, golds) == [1.0] * len(rows)
    assert score_batch(["math"] * len(rows), wrong, golds) == [0.0] * len(rows)


@pytest.mark.parametrize("name", sorted(MATH_FILES))
def test_math_verify_parses_every_gold(name: str) -> None:
    """Equivalent answers in another form need math-verify to understand each gold."""
    golds = [row["ground_truth"] for row in load_benchmark(name, path=str(DATA / MATH_FILES[name])).to_list()]
    verdicts = run_all(verify_with_math_verify, [(gold, gold) for gold in golds], timeout_s=30)
    assert [g for g, v in zip(golds, verdicts, strict=True) if v != 1.0] == []


def _fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


def test_every_humaneval_plus_canonical_solution_passes_and_empty_bodies_fail() -> None:
    rows = load_benchmark("humaneval_plus", path=str(DATA / "humanevalplus-originfmt.jsonl.gz")).to_list()
    upstream = {r["task_id"]: r for r in _jsonl_gz(DATA / "humanevalplus-originfmt.jsonl.gz")}
    solutions = [_fenced(upstream[r["id"]]["prompt"] + upstream[r["id"]]["canonical_solution"]) for r in rows]
    scores = score_batch(["code"] * len(rows), solutions, [r["ground_truth"] for r in rows])
    assert [r["id"] for r, s in zip(rows, scores, strict=True) if s != 1.0] == []
    assert "HumanEval/32" in {r["id"] for r in rows}  # the tolerance task is among them
    empty = [_fenced(upstream[r["id"]]["prompt"] + "    pass\n") for r in rows[:20]]
    assert score_batch(["code"] * 20, empty, [r["ground_truth"] for r in rows[:20]]) == [0.0] * 20


def test_every_mbpp_plus_canonical_solution_passes() -> None:
    rows = load_benchmark("mbpp_plus", path=str(DATA / "mbppplus-originfmt.jsonl.gz")).to_list()
    upstream = {f"Mbpp/{r['task_id']}": r for r in _jsonl_gz(DATA / "mbppplus-originfmt.jsonl.gz")}
    solutions = [_fenced(upstream[r["id"]]["code"]) for r in rows]
    scores = score_batch(["code"] * len(rows), solutions, [r["ground_truth"] for r in rows])
    assert len(rows) == 378 and [r["id"] for r, s in zip(rows, scores, strict=True) if s != 1.0] == []


def _jsonl_gz(path: Path) -> list[dict]:
    import gzip
    import json

    with gzip.open(path, "rt") as handle:
        return [json.loads(line) for line in handle if line.strip()]
