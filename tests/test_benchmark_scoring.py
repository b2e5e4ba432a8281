"""The benchmark files through the real scorers: golds and canonical solutions score 1, wrong answers 0.

Runs on the subsets shipped in ``tests/fixtures`` everywhere, and on the full files in ../shared/data where
that copy exists.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from gopd_lightning.data import load_benchmark
from gopd_lightning.rewards import score_batch
from gopd_lightning.rewards.math import verify_with_math_verify
from gopd_lightning.rewards.pool import run_all

SHARED = Path(__file__).parents[2] / "shared" / "data" / "benchmarks"
FIXTURES = Path(__file__).parent / "fixtures"
WHERE = [
    pytest.param(FIXTURES, id="fixtures"),
    pytest.param(SHARED, id="shared", marks=pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent")),
]
MATH_FILES = {
    "aime24": "aime24.parquet",
    "aime25": "aime25.parquet",
    "hmmt25_feb": "hmmt_feb_2025.jsonl",
    "math500": "math500.json",
}
REASONING = "<think>\nLet me try \\boxed{0} first... no.\n</think>\n" + "We expand and simplify. " * 200


@pytest.mark.parametrize("data", WHERE)
@pytest.mark.parametrize("name", sorted(MATH_FILES))
def test_math_golds_score_one_and_wrong_answers_zero(name: str, data: Path) -> None:
    rows = load_benchmark(name, path=str(data / MATH_FILES[name])).to_list()
    golds = [row["ground_truth"] for row in rows]
    right = [f"{REASONING}So the answer is \\boxed{{{gold}}}." for gold in golds]
    wrong = [f"{REASONING}So the answer is \\boxed{{-98765.4321}}." for _ in golds]
    assert score_batch(["math"] * len(rows), right, golds) == [1.0] * len(rows)
    assert score_batch(["math"] * len(rows), wrong, golds) == [0.0] * len(rows)


@pytest.mark.parametrize("data", WHERE)
@pytest.mark.parametrize("name", sorted(MATH_FILES))
def test_math_verify_parses_every_gold(name: str, data: Path) -> None:
    """Equivalent answers in another form need math-verify to understand each gold."""
    golds = [row["ground_truth"] for row in load_benchmark(name, path=str(data / MATH_FILES[name])).to_list()]
    verdicts = run_all(verify_with_math_verify, [(gold, gold) for gold in golds], timeout_s=30)
    assert [g for g, v in zip(golds, verdicts, strict=True) if v != 1.0] == []


def _fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


@pytest.mark.parametrize("data", WHERE)
@pytest.mark.parametrize("file", ["humanevalplus-originfmt.jsonl.gz", "humanevalplus-mini.jsonl.gz"])
def test_every_humaneval_plus_canonical_solution_passes_and_empty_bodies_fail(file: str, data: Path) -> None:
    rows = load_benchmark("humaneval_plus", path=str(data / file)).to_list()
    upstream = {r["task_id"]: r for r in _jsonl_gz(data / file)}
    solutions = [_fenced(upstream[r["id"]]["prompt"] + upstream[r["id"]]["canonical_solution"]) for r in rows]
    scores = score_batch(["code"] * len(rows), solutions, [r["ground_truth"] for r in rows])
    assert [r["id"] for r, s in zip(rows, scores, strict=True) if s != 1.0] == []
    assert "HumanEval/32" in {r["id"] for r in rows}  # the property-oracle task is among them
    empty = [_fenced(upstream[r["id"]]["prompt"] + "    pass\n") for r in rows[:20]]
    assert score_batch(["code"] * len(empty), empty, [r["ground_truth"] for r in rows[:20]]) == [0.0] * len(empty)


@pytest.mark.parametrize("data", WHERE)
def test_every_mbpp_plus_canonical_solution_passes(data: Path) -> None:
    rows = load_benchmark("mbpp_plus", path=str(data / "mbppplus-originfmt.jsonl.gz")).to_list()
    upstream = {f"Mbpp/{r['task_id']}": r for r in _jsonl_gz(data / "mbppplus-originfmt.jsonl.gz")}
    solutions = [_fenced(upstream[r["id"]]["code"]) for r in rows]
    scores = score_batch(["code"] * len(rows), solutions, [r["ground_truth"] for r in rows])
    assert len(rows) == (378 if data == SHARED else 4)
    assert [r["id"] for r, s in zip(rows, scores, strict=True) if s != 1.0] == []
    checked = [r for r in rows[:20] if NO_ASSERT not in upstream[r["id"]]["test"]]
    wrong = [_fenced(upstream[r["id"]]["code"] + "\n" + _always_none(upstream[r["id"]]["test"])) for r in checked]
    assert score_batch(["code"] * len(wrong), wrong, [r["ground_truth"] for r in checked]) == [0.0] * len(wrong)


# three MBPP+ checks (Mbpp/737 among them) compute this and never assert it: upstream, any answer that runs passes
NO_ASSERT = "exact_match = exp == (out is not None)\n\n"


def _always_none(test: str) -> str:
    """A redefinition of the task's entry point that returns None (wrong on every MBPP+ task)."""
    import re

    name = re.search(r"assertion\((\w+)\(\*inp\)", test)[1]
    return f"def {name}(*args, **kwargs):\n    return None\n"


def _jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as handle:
        return [json.loads(line) for line in handle if line.strip()]
