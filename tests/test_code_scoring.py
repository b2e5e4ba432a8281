"""Code answers: extraction of the last code block and scoring against each form of test spec."""

from __future__ import annotations

import gzip
import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gopd_lightning.rewards import code as code_rewards
from gopd_lightning.rewards import sandbox
from gopd_lightning.rewards.code import extract_code, score_code, score_code_batch
from gopd_lightning.rewards.sandbox import SandboxLimits

HUMANEVAL_MINI = Path(__file__).resolve().parents[2] / "shared/data/benchmarks/humanevalplus-mini.jsonl.gz"
QUICK = SandboxLimits(wall_time_s=5.0, cpu_time_s=3)


@pytest.fixture(autouse=True)
def usable_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Scoring logic is tested everywhere: where namespaces are unavailable, in weak mode."""
    if check_fails():
        monkeypatch.setenv(sandbox.WEAK_ENV, "weak")
    yield


def check_fails() -> bool:
    try:
        sandbox.check_sandbox()
    except sandbox.SandboxUnavailable:
        return True
    return False


def answer(code: str, language: str = "python") -> str:
    return f"Here is my solution.\n```{language}\n{code}\n```\nIt works."


def score(code: str, spec: dict, limits: SandboxLimits = QUICK) -> float:
    return score_code(answer(code), json.dumps(spec), limits=limits)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("```python\nfirst()\n```\ntext\n```py\nsecond()\n```", "second()\n"),
        ("```\nplain()\n```", "plain()\n"),
        ("```python\ncode()\n```\nRun it:\n```bash\npython main.py\n```", "code()\n"),
        ("<think>\n```python\ndraft()\n```\n</think>\n```python\nfinal()\n```", "final()\n"),
        ("<think>\n```python\ndraft()\n```\n</think>\nThe answer is 4.", None),
        ("```python\ndone()\n```\nand then\n```python\ntruncated(", "done()\n"),
        ("no code at all", None),
    ],
)
def test_extract_code(response: str, expected: str | None) -> None:
    assert extract_code(response) == expected


SQUARE = {"test": "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n"}


def test_script_tests() -> None:
    spec = {**SQUARE, "entry_point": "square"}
    assert score("def square(x):\n    return x * x", spec) == 1.0
    assert score("def square(x):\n    return x + x", spec) == 0.0
    assert score("def square(x):\n    return x ** 2", {"test": "assert square(5) == 25"}) == 1.0
    assert score("def square(x):\n    return x * 2", {"test": "assert square(5) == 25"}) == 0.0
    assert score("def square(x)\n    return x * x", spec) == 0.0  # syntax error


def test_exiting_early_is_not_passing() -> None:
    spec = {**SQUARE, "entry_point": "square"}
    assert score("import sys\nsys.exit(0)\ndef square(x):\n    return 0", spec) == 0.0
    assert score("import os\ndef square(x):\n    os._exit(0)", spec) == 0.0
    fake = "import sys\ndef square(x):\n    raise SystemExit(0)"
    assert score(fake, {"inputs": [[3]], "outputs": [9], "fn_name": "square"}) == 0.0


def test_missing_code_scores_zero() -> None:
    assert score_code("The answer is x * x.", json.dumps({**SQUARE, "entry_point": "square"})) == 0.0


ADD = {"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]}


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        ("a, b = map(int, input().split())\nprint(a + b)", 1.0),
        ("a, b = map(int, input().split())\nprint(a + b, '   ')\nprint()\nprint()", 1.0),  # trailing whitespace
        ("import sys\na, b = map(int, sys.stdin.buffer.read().split())\nsys.stdout.buffer.write(b'%d' % (a + b))", 1.0),
        ("import os\na, b = map(int, open(0).read().split())\nos.write(1, b'%d\\n' % (a + b))", 1.0),
        ("a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)", 0.0),  # second case wrong
        ("a, b = map(int, input().split())\nprint(a + b)\nprint('debug')", 0.0),
        ("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(2)", 0.0),
        ("print(undefined_name)", 0.0),
    ],
)
def test_stdin_stdout_tests(solution: str, expected: float) -> None:
    assert score(solution, ADD) == expected


def test_stdout_numbers() -> None:
    third = {"inputs": ["3\n"], "outputs": ["0.333333333 1\n"]}
    assert score("print(1 / int(input()), 1)", third) == 1.0
    assert score("print(f'{1 / int(input()):.7f}', 1)", third) == 1.0
    assert score("print(1 / int(input()) + 1e-4, 1)", third) == 0.0
    assert score("print(1000001)", {"inputs": [""], "outputs": ["1000000"]}) == 0.0, "integers match exactly"


TWO_SUM = {"inputs": [[[2, 7, 11, 15], 9], [[3, 2, 4], 6]], "outputs": [[0, 1], [1, 2]], "fn_name": "twoSum"}
TWO_SUM_CLASS = """
class Solution:
    def twoSum(self, nums, target):
        seen = {}
        for index, number in enumerate(nums):
            if target - number in seen:
                return (seen[target - number], index)  # a tuple counts as a list
            seen[number] = index
"""


def test_functional_tests() -> None:
    assert score(TWO_SUM_CLASS, TWO_SUM) == 1.0
    assert score(TWO_SUM_CLASS.replace("(seen[target - number], index)", "[index, index]"), TWO_SUM) == 0.0
    top_level = "def twoSum(nums, target):\n    return [nums.index(target - nums[-1]), len(nums) - 1]"
    assert score(top_level, {"inputs": [[[1, 5, 3], 4]], "outputs": [[0, 2]], "fn_name": "twoSum"}) == 1.0
    assert score("def other(nums, target):\n    return [0, 1]", TWO_SUM) == 0.0
    mean = {"inputs": [[[1, 2, 2]], [[1, 1]]], "outputs": [1.6666667, 1], "fn_name": "mean"}
    assert score("def mean(values):\n    return sum(values) / len(values)", mean) == 1.0
    assert score("def mean(values):\n    return sum(values) / len(values) + 1e-3", mean) == 0.0


@pytest.mark.parametrize(
    ("solution", "spec", "limits"),
    [
        ("while True:\n    pass", {"inputs": ["1\n"], "outputs": ["1\n"]}, SandboxLimits(wall_time_s=1, cpu_time_s=1)),
        ("import time\ntime.sleep(60)", {"test": "pass", "timeout_s": 0.5}, QUICK),  # the spec's limit wins
    ],
)
def test_timeouts_score_zero(solution: str, spec: dict, limits: SandboxLimits) -> None:
    started = time.monotonic()
    assert score(solution, spec, limits) == 0.0
    assert time.monotonic() - started < 3


def test_bad_specs_raise() -> None:
    for ground_truth in ["not json", "[1]", '{"inputs": ["1"], "outputs": []}', '{"outputs": ["1"]}']:
        with pytest.raises(ValueError, match="ground truth|spec"):
            score_code(answer("print(1)"), ground_truth)
    with pytest.raises(ValueError, match="argument lists"):
        score_code(answer("print(1)"), json.dumps({"inputs": ["1"], "outputs": [1], "fn_name": "f"}))


def test_batch_is_parallel_and_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    active_slots, overlaps, lock = set(), [], threading.Lock()
    run_python = code_rewards.run_python

    def tracking_run_python(*args, slot: int, **kwargs):
        with lock:
            overlaps.append(slot in active_slots)
            active_slots.add(slot)
        try:
            return run_python(*args, slot=slot, **kwargs)
        finally:
            with lock:
                active_slots.discard(slot)

    monkeypatch.setattr(code_rewards, "run_python", tracking_run_python)
    sleepy = "import time\ntime.sleep(1)\n"
    responses = [answer(sleepy + f"print({value})") for value in (1, 2, 3, 4, 5, 6)]
    truths = [json.dumps({"inputs": [""], "outputs": [str(expected)]}) for expected in (1, 0, 3, 4, 0, 6)]
    started = time.monotonic()
    assert score_code_batch(responses, truths, max_workers=6, limits=QUICK) == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert time.monotonic() - started < 4, "six one-second runs overlap"
    assert len(overlaps) == 6 and not any(overlaps), "runs in flight never share a slot"
    assert score_code_batch([], []) == []


@pytest.mark.skipif(not HUMANEVAL_MINI.exists(), reason=f"{HUMANEVAL_MINI} is absent")
def test_humanevalplus_canonical_solutions_pass() -> None:
    with gzip.open(HUMANEVAL_MINI, "rt") as lines:
        tasks = [json.loads(line) for line in itertools.islice(lines, 3)]
    for task in tasks:
        reference = task["prompt"] + task["canonical_solution"]
        test = (
            f"import copy\nREFERENCE = {reference!r}\nINPUTS = {task['base_input']!r}\n"
            "def check(candidate):\n"
            "    namespace = {}\n"
            "    exec(REFERENCE, namespace)\n"
            "    for args in INPUTS:\n"
            f"        assert candidate(*copy.deepcopy(args)) == namespace[{task['entry_point']!r}](*args)\n"
        )
        spec = json.dumps({"test": test, "entry_point": task["entry_point"]})
        assert score_code(answer(reference), spec) == 1.0, task["task_id"]
        wrong = task["prompt"] + "    return None\n"
        assert score_code(answer(wrong), spec) == 0.0, task["task_id"]
