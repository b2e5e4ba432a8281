"""Benchmark loaders: real benchmark files (when ../shared/data is present), a LiveCodeBench fixture, the hub."""

from __future__ import annotations

import base64
import gzip
import json
import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import datasets
import pytest

from gopd_lightning.data import code_spec_form, load_benchmark
from gopd_lightning.data.benchmarks import decode_private_tests

BENCHMARKS = Path(__file__).parents[2] / "shared" / "data" / "benchmarks"
needs_shared = pytest.mark.skipif(not BENCHMARKS.is_dir(), reason="../shared/data/benchmarks is absent")
FIXTURES = Path(__file__).parent / "fixtures"
LCB_FIXTURE = FIXTURES / "livecodebench_lite.jsonl"
SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
EVALPLUS = "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
LCB_SYSTEM = (
    "You are an expert Python programmer. You will be given a question (problem specification) and will generate a "
    "correct Python program that matches the specification and passes all tests."
)


def raw_records(file: str, where: Path = BENCHMARKS) -> dict[str, dict]:
    """The upstream records of a gzipped EvalPlus file by task id (``Mbpp/<n>`` for MBPP's integer ids)."""
    with gzip.open(where / file, "rt") as handle:
        records = [json.loads(line) for line in handle]
    return {r["task_id"] if isinstance(r["task_id"], str) else f"Mbpp/{r['task_id']}": r for r in records}


def program(solution: str, ground_truth: str) -> str:
    """The sandbox's program for a script test spec."""
    spec = json.loads(ground_truth)
    entry = (
        f"\nif callable(globals().get('check')):\n    check({spec['entry_point']})" if spec.get("entry_point") else ""
    )
    return f"{solution}\n{spec['test']}{entry}"


def passes(source: str) -> bool:
    result = subprocess.run([sys.executable, "-"], input=source, capture_output=True, text=True, timeout=300)
    return result.returncode == 0


@needs_shared
@pytest.mark.parametrize(
    ("name", "file", "count", "first_last"),
    [
        ("aime24", "aime24.parquet", 30, ("aime24/0", "aime24/29")),
        ("aime25", "aime25.parquet", 30, ("0", "29")),
        ("hmmt25_feb", "hmmt_feb_2025.jsonl", 30, ("1", "30")),
        ("math500", "math500.json", 500, ("test/precalculus/807.json", "test/geometry/615.json")),
        ("humaneval_plus", "humanevalplus-originfmt.jsonl.gz", 164, ("HumanEval/0", "HumanEval/163")),
        ("humaneval_plus", "humanevalplus-mini.jsonl.gz", 164, ("HumanEval/0", "HumanEval/163")),
        ("mbpp_plus", "mbppplus-originfmt.jsonl.gz", 378, ("Mbpp/2", "Mbpp/809")),
    ],
)
def test_benchmark_files_load(name: str, file: str, count: int, first_last: tuple[str, str]) -> None:
    data = load_benchmark(name, str(BENCHMARKS / file))
    assert len(data) == count and len(set(data["id"])) == count
    assert (data[0]["id"], data[-1]["id"]) == first_last
    assert set(data["source"]) == {name}
    code = name in ("humaneval_plus", "mbpp_plus")
    assert set(data["domain"]) == {"code" if code else "math"}
    for row in data:
        [message] = row["prompt"]
        assert message["role"] == "user"
        if code:
            assert message["content"].startswith(EVALPLUS + "\n```\n") and message["content"].endswith("\n```\n")
            assert code_spec_form(row["ground_truth"]) == "reference"
            assert {"entry_point", "reference"} <= set(json.loads(row["ground_truth"]))
        else:
            assert message["content"].endswith("\n\n" + SUFFIX) and message["content"].count(SUFFIX) == 1
            assert "Let's think step by step" not in message["content"] and row["ground_truth"]


@pytest.mark.parametrize(
    ("name", "file", "ids"),
    [
        ("aime24", "aime24.parquet", ["aime24/0", "aime24/1", "aime24/2"]),
        ("aime25", "aime25.parquet", ["0", "1", "2"]),
        ("hmmt25_feb", "hmmt_feb_2025.jsonl", ["1", "2", "3"]),
        (
            "math500",
            "math500.json",
            [
                "test/precalculus/807.json",
                "test/intermediate_algebra/1994.json",
                "test/algebra/2584.json",
                "test/number_theory/572.json",
                "test/algebra/1349.json",
            ],
        ),
        (
            "humaneval_plus",
            "humanevalplus-originfmt.jsonl.gz",
            ["HumanEval/32", "HumanEval/39", "HumanEval/55", "HumanEval/83"],
        ),
        (
            "humaneval_plus",
            "humanevalplus-mini.jsonl.gz",
            ["HumanEval/0", "HumanEval/32", "HumanEval/55", "HumanEval/83"],
        ),
        ("mbpp_plus", "mbppplus-originfmt.jsonl.gz", ["Mbpp/232", "Mbpp/630", "Mbpp/737", "Mbpp/793"]),
    ],
)
def test_fixture_subsets_load_like_the_full_files(name: str, file: str, ids: list[str]) -> None:
    """The shipped subsets (tests/fixtures) go through the same loaders on every clone."""
    data = load_benchmark(name, str(FIXTURES / file))
    assert data["id"] == ids and set(data["source"]) == {name}
    for row in data:
        if name in ("humaneval_plus", "mbpp_plus"):
            assert code_spec_form(row["ground_truth"]) == "reference"
        else:
            assert row["ground_truth"] and row["prompt"][0]["content"].endswith("\n\n" + SUFFIX)


@needs_shared
@pytest.mark.parametrize(
    ("name", "file", "row_id", "gold"),
    [
        ("aime24", "aime24.parquet", "aime24/15", "73"),  # upstream "073"
        ("aime25", "aime25.parquet", "19", "336"),  # upstream "336^\circ"
        ("hmmt25_feb", "hmmt_feb_2025.jsonl", "10", "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}"),
        ("math500", "math500.json", "test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ],
)
def test_math_gold_answers(name: str, file: str, row_id: str, gold: str) -> None:
    data = load_benchmark(name, str(BENCHMARKS / file))
    assert dict(zip(data["id"], data["ground_truth"], strict=True))[row_id] == gold


@pytest.mark.parametrize(
    ("name", "file", "row_id", "gold"),
    [
        ("aime24", "aime24.parquet", "aime24/1", "25"),  # upstream "025"
        ("aime25", "aime25.parquet", "0", "70"),
        ("hmmt25_feb", "hmmt_feb_2025.jsonl", "3", "\\frac{1}{576}"),
        ("math500", "math500.json", "test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ],
)
def test_math_gold_answers_of_the_fixtures(name: str, file: str, row_id: str, gold: str) -> None:
    data = load_benchmark(name, str(FIXTURES / file))
    assert dict(zip(data["id"], data["ground_truth"], strict=True))[row_id] == gold


@needs_shared
def test_math_prompt_is_the_question_and_the_suffix() -> None:
    content = load_benchmark("aime24", str(BENCHMARKS / "aime24.parquet"))[0]["prompt"][0]["content"]
    assert content.startswith("Every morning Aya goes for a $9$-kilometer-long walk and stops at a coffee shop")
    assert content.endswith("including the $t$ minutes spent in the coffee shop.\n\n" + SUFFIX)


@needs_shared
def test_evalplus_prompts_are_evalplus_chat_prompts() -> None:
    humaneval = load_benchmark("humaneval_plus", str(BENCHMARKS / "humanevalplus-originfmt.jsonl.gz"))
    task = raw_records("humanevalplus-originfmt.jsonl.gz")["HumanEval/0"]
    assert humaneval[0]["prompt"][0]["content"] == f"{EVALPLUS}\n```\n{task['prompt'].strip()}\n```\n"
    mbpp = load_benchmark("mbpp_plus", str(BENCHMARKS / "mbppplus-originfmt.jsonl.gz"))
    assert mbpp[0]["prompt"][0]["content"] == (
        f'{EVALPLUS}\n```\n"""\nWrite a function to find the shared elements from the given two lists.\n'
        'assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"""\n```\n'
    )


@pytest.mark.parametrize("file", ["humanevalplus-originfmt.jsonl.gz", "humanevalplus-mini.jsonl.gz"])
def test_find_zero_is_checked_with_evalplus_tolerance_oracle(file: str) -> None:
    task = raw_records(file, FIXTURES)["HumanEval/32"]
    spec = {row["id"]: row for row in load_benchmark("humaneval_plus", str(FIXTURES / file))}["HumanEval/32"]
    ground_truth = spec["ground_truth"]
    assert passes(program(task["prompt"] + task["canonical_solution"], ground_truth))
    assert not passes(program(task["prompt"] + "    return 0.5\n", ground_truth))
    if "test" in task:  # the upstream check, unpatched, fails even the canonical solution
        unpatched = json.dumps({"test": task["test"], "entry_point": "find_zero"})
        assert not passes(program(task["prompt"] + task["canonical_solution"], unpatched))


def test_evalplus_format_check_runs_base_and_plus_inputs_against_the_reference() -> None:
    task = raw_records("humanevalplus-mini.jsonl.gz", FIXTURES)["HumanEval/0"]
    ground_truth = load_benchmark("humaneval_plus", str(FIXTURES / "humanevalplus-mini.jsonl.gz"))[0]["ground_truth"]
    assert passes(program(task["prompt"] + task["canonical_solution"], ground_truth))
    # right on the docstring examples, wrong when the closest pair is not adjacent in the list
    sloppy = "    return any(abs(a - b) < threshold for a, b in zip(numbers, numbers[1:]))\n"
    assert not passes(program(task["prompt"] + sloppy, ground_truth))


def test_mbpp_program_is_code_and_test() -> None:
    task = raw_records("mbppplus-originfmt.jsonl.gz", FIXTURES)["Mbpp/232"]
    ground_truth = load_benchmark("mbpp_plus", str(FIXTURES / "mbppplus-originfmt.jsonl.gz"))[0]["ground_truth"]
    assert json.loads(ground_truth)["entry_point"] == "larg_nnum"
    assert passes(program(task["code"], ground_truth))
    assert not passes(program("def larg_nnum(items, n):\n    return sorted(items)[:n]\n", ground_truth))


def test_livecodebench_fixture_decodes_tests_and_builds_upstream_prompts() -> None:
    rows = {row["id"]: row for row in load_benchmark("livecodebench", str(LCB_FIXTURE), start_date=None, end_date=None)}
    assert list(rows) == ["abc901_a", "3901", "2051A", "3960"]
    assert {row["source"] for row in rows.values()} == {"livecodebench"}
    assert {row["domain"] for row in rows.values()} == {"code"}
    # stdin problem, private tests base64(zlib(pickle(json)))
    assert json.loads(rows["abc901_a"]["ground_truth"]) == {
        "inputs": ["3 5\n", "1 1\n", "100 100\n"],
        "outputs": ["8\n", "2\n", "200\n"],
        "timeout_s": 6.0,
    }
    # functional problems: each input is newline-separated JSON arguments; private tests plain JSON or compressed
    assert json.loads(rows["3901"]["ground_truth"]) == {
        "inputs": [[[1, 2, 3, 4], 2], [[2, 4, 6], 1], [[5], 3]],
        "outputs": [2, 3, 0],
        "fn_name": "countMultiples",
        "timeout_s": 6.0,
    }
    assert json.loads(rows["3960"]["ground_truth"]) == {
        "inputs": [["a b"], ["x y z"]],
        "outputs": ["b a", "z y x"],
        "fn_name": "reverseWords",
        "timeout_s": 6.0,
    }
    records = {r["question_id"]: r for r in map(json.loads, LCB_FIXTURE.read_text().splitlines())}
    assert rows["abc901_a"]["prompt"] == [
        {"role": "system", "content": LCB_SYSTEM},
        {
            "role": "user",
            "content": f"### Question:\n{records['abc901_a']['question_content']}\n\n"
            "### Format: Read the inputs from stdin solve the problem and write the answer to stdout (do not directly "
            "test on the sample inputs). Enclose your code within delimiters as follows. Ensure that when the python "
            "program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.\n"
            "```python\n# YOUR CODE HERE\n```\n\n### Answer: (use the provided format with backticks)\n\n",
        },
    ]
    assert rows["3901"]["prompt"][1]["content"] == (
        f"### Question:\n{records['3901']['question_content']}\n\n"
        "### Format: You will use the following starter code to write the solution to the problem and enclose your "
        f"code within delimiters.\n```python\n{records['3901']['starter_code']}\n```\n\n"
        "### Answer: (use the provided format with backticks)\n\n"
    )


@pytest.mark.parametrize(
    ("options", "ids"),
    [
        ({}, ["abc901_a", "3901"]),  # default: the v6 window 2025-02-01 .. 2025-05-01
        ({"start_date": "2024-12-15", "end_date": "2025-03-01"}, ["abc901_a", "2051A"]),  # bounds inclusive
        ({"start_date": "2025-04-13", "end_date": None}, ["3960"]),
        ({"start_date": "2025-04-13"}, []),
        ({"start_date": None, "end_date": "2024-12-31"}, ["2051A"]),
    ],
)
def test_livecodebench_date_window(options: dict, ids: list[str]) -> None:
    assert load_benchmark("livecodebench", str(LCB_FIXTURE), **options)["id"] == ids


def test_private_tests_never_unpickle_objects() -> None:
    blob = base64.b64encode(zlib.compress(pickle.dumps(print))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        decode_private_tests(blob)
    assert decode_private_tests('[{"input": "1", "output": "2", "testtype": "stdin"}]')[0]["output"] == "2"


def test_unknown_benchmark_and_option_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown benchmark 'aime26'; known benchmarks: aime24, aime25, hmmt25_feb"):
        load_benchmark("aime26")
    with pytest.raises(ValueError, match=r"'aime24' takes the options \[\], not \['start_date'\]"):
        load_benchmark("aime24", start_date="2024-01-01")


def test_malformed_benchmark_row_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "hmmt.jsonl"
    path.write_text(json.dumps({"id": 1, "problem": "1+1?", "answer": "2"}) + "\n" + json.dumps({"id": 2}) + "\n")
    with pytest.raises(ValueError, match=r"hmmt.jsonl:2: malformed hmmt25_feb row, missing field 'problem'"):
        load_benchmark("hmmt25_feb", str(path))


MATH_RECORD = {"problem_idx": 7, "problem": "Compute $1+1$.", "answer": "2", "solution": "..."}
EVALPLUS_RECORDS = {
    "humaneval_plus": {
        "task_id": "HumanEval/0",
        "prompt": "def f(x):\n",
        "canonical_solution": "    return x\n",
        "entry_point": "f",
        "test": "def check(candidate):\n    assert candidate(1) == 1\n",
    },
    "mbpp_plus": {
        "task_id": 2,
        "prompt": "Write f.",
        "code": "def f(x):\n    return x\n",
        "test_list": ["assert f(1) == 1"],
        "test_imports": [],
        "test": "assert f(1) == 1\n",
    },
}


@pytest.mark.parametrize(
    ("name", "hub_id", "split", "row_id"),
    [
        ("aime24", "HuggingFaceH4/aime_2024", "train", "7"),
        ("aime25", "math-ai/aime25", "test", "7"),
        ("hmmt25_feb", "MathArena/hmmt_feb_2025", "train", "7"),
        ("hmmt25_nov", "MathArena/hmmt_nov_2025", "train", "7"),
        ("math500", "HuggingFaceH4/MATH-500", "test", "7"),
        ("humaneval_plus", "evalplus/humanevalplus", "test", "HumanEval/0"),
        ("mbpp_plus", "evalplus/mbppplus", "test", "Mbpp/2"),
    ],
)
def test_benchmarks_load_their_hub_dataset(monkeypatch, name: str, hub_id: str, split: str, row_id: str) -> None:
    calls = []

    def load_dataset(path: str, split: str | None = None, **kwargs) -> datasets.Dataset:
        calls.append((path, split, kwargs))
        return datasets.Dataset.from_list([EVALPLUS_RECORDS.get(name, MATH_RECORD)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert load_benchmark(name)["id"] == [row_id]
    assert calls == [(hub_id, split, {})]


def test_livecodebench_hub_reads_the_release_v6_json_files(monkeypatch) -> None:
    calls = []
    records = [json.loads(line) for line in LCB_FIXTURE.read_text().splitlines()]

    def load_dataset(path: str, split: str | None = None, **kwargs) -> datasets.Dataset:
        calls.append((path, split, kwargs))
        return datasets.Dataset.from_list(records)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert load_benchmark("livecodebench")["id"] == ["abc901_a", "3901"]
    repository = "hf://datasets/livecodebench/code_generation_lite"
    files = [f"{repository}/test{n}.jsonl" if n > 1 else f"{repository}/test.jsonl" for n in range(1, 7)]
    assert calls == [("json", "test", {"data_files": {"test": files}})]
