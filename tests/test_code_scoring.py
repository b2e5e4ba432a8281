"""Code answers: extraction of the last code block and scoring against each form of test spec."""

from __future__ import annotations

import gzip
import itertools
import json
import time
from pathlib import Path

import pytest

from gopd_lightning.rewards.code import extract_code, score_code, score_code_batch
from gopd_lightning.rewards.sandbox import SandboxLimits

HUMANEVAL_MINI = Path(__file__).parent / "fixtures" / "humanevalplus-mini.jsonl.gz"
QUICK = SandboxLimits(wall_time_s=5.0, cpu_time_s=3)
pytestmark = pytest.mark.usefixtures("usable_sandbox")


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
        ("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(2)", 1.0),  # lcb_runner: a normal end
        ("a, b = map(int, input().split())\nprint(a + b)\nraise ValueError", 0.0),
        ("print(undefined_name)", 0.0),
    ],
)
def test_stdin_stdout_tests(solution: str, expected: float) -> None:
    assert score(solution, ADD) == expected


def test_stdout_is_compared_line_by_line_like_lcb_runner() -> None:
    """lcb_runner: as many stripped lines; each equal as text, or as a list of Decimal tokens."""
    third = {"inputs": ["3\n"], "outputs": ["0.333333333 1\n"]}
    assert score("print(f'{1 / int(input()):.9f}', 1)", third) == 1.0
    assert score("print(f'{1 / int(input()):.9f}  1.0  ')", third) == 1.0, "Decimal('1.0') == Decimal('1')"
    assert score("print(1 / int(input()), 1)", third) == 0.0, "no float tolerance: 0.3333333333333333 differs"
    assert score("print(f'{1 / int(input()):.9f}')\nprint(1)", third) == 0.0, "the same tokens on other lines"
    assert score("print(1000001)", {"inputs": [""], "outputs": ["1000000"]}) == 0.0
    assert score("print('yes  ')\nprint()\n", {"inputs": [""], "outputs": ["\nyes\n\n"]}) == 1.0


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
    mean = {"inputs": [[[1, 2, 3]], [[1, 1]]], "outputs": [2.0, 1], "fn_name": "mean"}
    assert score("def mean(values):\n    return sum(values) / len(values)", mean) == 1.0
    assert score("def mean(values):\n    return sum(values) / len(values) + 1e-9", mean) == 0.0, "== as lcb_runner"
    nested = {"inputs": [[1]], "outputs": [[[1, 2]]], "fn_name": "pairs"}
    assert score("def pairs(x):\n    return ([x, 2],)", nested) == 1.0, "only the outer tuple counts as a list"
    assert score("def pairs(x):\n    return [(x, 2)]", nested) == 0.0


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


def test_batch_is_parallel_and_ordered() -> None:
    sleepy = "import time\ntime.sleep(1)\n"
    responses = [answer(sleepy + f"print({value})") for value in (1, 2, 3, 4, 5, 6)]
    truths = [
        json.dumps({"inputs": [""], "outputs": [str(expected)], "timeout_s": 3}) for expected in (1, 0, 3, 4, 0, 6)
    ]
    started = time.monotonic()
    assert score_code_batch(responses, truths, max_workers=6, limits=QUICK) == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert time.monotonic() - started < 4, "six one-second runs overlap"
    assert score_code_batch([], []) == []


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


LCB_FIXTURE = Path(__file__).parent / "fixtures" / "livecodebench_lite.jsonl"
LCB_SOLUTIONS = {  # (a correct answer as a contestant writes it, one that only a lenient checker accepts)
    "abc901_a": (
        "a, b = map(int, input().split())\nprint(a + b)",
        "a, b = map(int, input().split())\nprint(a + b + 1e-7)",
    ),
    "2051A": (
        "from itertools import groupby\nprint(max(len(list(g)) for _, g in groupby(input().strip())))",
        "from itertools import groupby\nprint(max(len(list(g)) for _, g in groupby(input().strip())) + 1e-7)",
    ),
    "3901": (
        "class Solution:\n    def countMultiples(self, nums: List[int], k: int) -> int:\n"
        "        return sum(1 for x in nums if x % k == 0)",
        "class Solution:\n    def countMultiples(self, nums: List[int], k: int) -> int:\n"
        "        return sum(1 for x in nums if x % k == 0) + 1e-9",
    ),
    "3960": (
        "class Solution:\n    def reverseWords(self, s: str) -> str:\n        return ' '.join(reversed(s.split()))",
        "class Solution:\n    def reverseWords(self, s: str) -> str:\n"
        "        return ' '.join(reversed(s.split())) + ' '",
    ),
}


def test_livecodebench_rows_are_graded_like_lcb_runner() -> None:
    """The fixture's problems: correct answers pass (``List`` needs no import, as under lcb_runner's prelude);
    answers off by a float epsilon, split across lines or padded fail, as lcb_runner fails them."""
    from gopd_lightning.data import load_benchmark

    rows = load_benchmark("livecodebench", str(LCB_FIXTURE), start_date=None, end_date=None).to_list()
    assert sorted(row["id"] for row in rows) == sorted(LCB_SOLUTIONS)
    for row in rows:
        right, lenient_only = LCB_SOLUTIONS[row["id"]]
        assert score_code(answer(right), row["ground_truth"]) == 1.0, row["id"]
        assert score_code(answer(lenient_only), row["ground_truth"]) == 0.0, row["id"]


@pytest.mark.parametrize(
    ("prediction", "expected", "verdict"),
    [
        ("8\n", "8", True),
        ("  8  \n\n", "8\n", True),  # the whole text and each line are stripped
        ("1 2\n3", "1 2 3", False),  # the line structure counts
        ("1.0 2", "1 2", True),  # Decimal tokens
        ("1e2", "100", True),
        ("0.5000001", "0.5", False),  # no float tolerance
        ("1  2", "1 2", True),
        ("YES", "yes", False),
        ("nan", "nan", True),  # equal as text
        ("NaN 1", "nan 1", False),  # Decimal NaNs are never equal
    ],
)
def test_stdout_comparison_matches_lcb_runner(prediction: str, expected: str, verdict: bool) -> None:
    assert code_rewards_same_stdout(prediction, expected) is verdict


def code_rewards_same_stdout(prediction: str, expected: str) -> bool:
    from gopd_lightning.rewards.code import same_stdout

    return same_stdout(prediction, expected)
