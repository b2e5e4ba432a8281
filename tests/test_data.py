"""The DataModule and its sources: toy, file and hub rows, row formats, mixing, prompt lengths, malformed input."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import datasets
import pytest

from gopd_lightning.data import MATH_SUFFIX, DataSource, PromptDataModule, code_spec_form
from gopd_lightning.rollout import render_prompts
from gopd_lightning.toy.tokenizer import build_tokenizer


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


GOOD = {"id": "a", "domain": "math", "prompt": [{"role": "user", "content": "1+1?"}], "ground_truth": "2"}


def test_toy_and_jsonl_sources_mix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD, {**GOOD, "id": "b", "domain": "code"}])
    data = PromptDataModule(train=[DataSource("toy:math", limit=6), DataSource(path)], batch_size=4)
    data.setup("fit")
    assert len(data.datasets["train"]) == 8
    assert data.domains == {"math", "code"}
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, list) and len(batch) == 4
    assert set(batch[0]) == {"id", "domain", "prompt", "ground_truth", "source"}
    assert set(data.datasets["train"]["source"]) == {"toy:math", "rows"}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "domain"}, r"missing field\(s\) \['domain'\]"),
        ({**GOOD, "prompt": "just text"}, "'prompt' must be a non-empty list"),
        ({**GOOD, "ground_truth": 2}, "'ground_truth' must be a string"),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, row, message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, row])
    data = PromptDataModule(train=[DataSource(path)])
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{message}"):
        data.setup("fit")


def test_missing_source_and_split_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a toy source nor an existing file"):
        PromptDataModule(train=[DataSource(str(tmp_path / "nope.jsonl"))]).setup("fit")
    data = PromptDataModule(train=[DataSource("toy:math", limit=4)])
    data.setup("fit")
    assert data.val_dataloader() == []  # fit then simply skips validation
    with pytest.raises(ValueError, match="no test data"):
        data.test_dataloader()


def write_parquet(path: Path, rows: list[dict]) -> str:
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


WRITERS = {"jsonl": write_jsonl, "parquet": write_parquet}
VERL_MATH = {
    "data_source": "numina_olympiads",
    "prompt": [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "What is 2+3?"}],
    "ability": "math",
    "reward_model": {"ground_truth": "5", "style": "rule"},
    "extra_info": {"split": "train", "index": 0},
}
EURUS_STDIN = {
    **VERL_MATH,
    "data_source": "codecontests",
    "ability": "code",
    "prompt": [{"role": "user", "content": "Write Python code to solve the task:\nPrint the sum of two numbers."}],
    "reward_model": {
        "ground_truth": json.dumps({"inputs": [["1 2"], "3 4\n"], "outputs": ["3", "7\n"]}),
        "style": "rule",
    },
}
EURUS_FUNCTIONAL = {
    **EURUS_STDIN,
    "data_source": "apps",
    "ability": "",
    "reward_model": {
        "ground_truth": json.dumps({"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]]}),
        "style": "rule",
    },
}


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_verl_and_eurus_rows_are_adapted(tmp_path: Path, kind: str) -> None:
    path = WRITERS[kind](tmp_path / f"eurus.{kind}", [VERL_MATH, EURUS_STDIN, EURUS_FUNCTIONAL])
    data = PromptDataModule(train=[DataSource(path)])
    data.setup("fit")
    math, stdin, functional = data.datasets["train"]
    assert [row["id"] for row in (math, stdin, functional)] == ["eurus/0", "eurus/1", "eurus/2"]
    assert (math["domain"], math["ground_truth"], math["prompt"]) == ("math", "5", VERL_MATH["prompt"])
    assert stdin["domain"] == "code" and code_spec_form(stdin["ground_truth"]) == "stdio"
    assert json.loads(stdin["ground_truth"]) == {"inputs": ["1 2", "3 4\n"], "outputs": ["3", "7\n"]}
    assert functional["domain"] == "code" and code_spec_form(functional["ground_truth"]) == "functional"
    assert json.loads(functional["ground_truth"]) == {
        "inputs": [[1, 2], [3, 4]],
        "outputs": [[3], [7]],
        "fn_name": "add",
    }
    assert data.domains == {"math", "code"} and set(data.datasets["train"]["source"]) == {"eurus"}


def deepmath_row(question: str, difficulty: float) -> dict:
    return {
        "question": question,
        "final_answer": "\\frac{1}{2}",
        "difficulty": difficulty,
        "topic": "Algebra",
        "r1_solution_1": "long...",
        "r1_solution_2": "long...",
        "r1_solution_3": "long...",
    }


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_deepmath_rows_get_the_math_suffix_once_and_the_difficulty_filter(tmp_path: Path, kind: str) -> None:
    rows = [deepmath_row("Find x.", 5.5), deepmath_row("Find y.", 6.0), deepmath_row(f"Find z. {MATH_SUFFIX}", 8.0)]
    path = WRITERS[kind](tmp_path / f"deepmath.{kind}", rows)
    data = PromptDataModule(train=[DataSource(path, min_difficulty=6)])
    data.setup("fit")
    kept = data.datasets["train"]
    assert kept["id"] == ["deepmath/1", "deepmath/2"]  # ids count every row of the file, filtered or not
    assert [row["prompt"][0]["content"] for row in kept] == [f"Find y.\n\n{MATH_SUFFIX}", f"Find z. {MATH_SUFFIX}"]
    assert set(kept["ground_truth"]) == {"\\frac{1}{2}"} and set(kept["domain"]) == {"math"}


def test_format_can_be_forced_and_a_mismatch_names_the_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "verl.jsonl", [VERL_MATH])
    with pytest.raises(ValueError, match=r"verl.jsonl:1: malformed deepmath row, missing field 'question'"):
        PromptDataModule(train=[DataSource(path, format="deepmath")]).setup("fit")


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_malformed_verl_row_names_file_and_row(tmp_path: Path, kind: str) -> None:
    broken = {**VERL_MATH, "reward_model": {"ground_truth": None, "style": "rule"}, "data_source": "taco"}
    path = WRITERS[kind](tmp_path / f"bad.{kind}", [VERL_MATH, broken])
    with pytest.raises(ValueError, match=rf"bad.{kind}:2: malformed verl row: a code ground truth must be"):
        PromptDataModule(train=[DataSource(path)]).setup("fit")


def test_min_difficulty_needs_a_difficulty(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD])
    with pytest.raises(
        ValueError, match=r"rows.jsonl:1: min_difficulty is set but the row has no numeric 'difficulty'"
    ):
        PromptDataModule(train=[DataSource(path, min_difficulty=6)]).setup("fit")


def test_hub_source_reads_the_requested_split(monkeypatch) -> None:
    calls = []

    def load_dataset(path: str, split: str | None = None, **kwargs) -> datasets.Dataset:
        calls.append((path, split, kwargs))
        return datasets.Dataset.from_list([deepmath_row("Find x.", 7.0), deepmath_row("Find y.", 3.0)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = PromptDataModule(train=[DataSource("hf:zwhe99/DeepMath-103K", min_difficulty=6)])
    data.setup("fit")
    assert calls == [("zwhe99/DeepMath-103K", "train", {})]
    assert data.datasets["train"]["id"] == ["zwhe99/DeepMath-103K/0"]
    assert data.datasets["train"]["source"] == ["zwhe99/DeepMath-103K"]


def test_the_authors_training_files_are_read_as_verl_rows(tmp_path: Path) -> None:
    """``data_files`` picks a file of a hub dataset (here a local folder laid out like the authors' one)."""
    (tmp_path / "math_and_code").mkdir()
    write_parquet(tmp_path / "math_and_code" / "train.parquet", [VERL_MATH, EURUS_FUNCTIONAL])
    (tmp_path / "other.parquet").write_bytes(b"not read")
    source = DataSource(f"hf:{tmp_path}", data_files="math_and_code/train.parquet", format="verl", name="mixed")
    data = PromptDataModule(train=[source])
    data.setup("fit")
    assert data.datasets["train"]["domain"] == ["math", "code"] and data.domains == {"math", "code"}
    assert data.datasets["train"]["ground_truth"][0] == "5"
    with pytest.raises(ValueError, match="data_files picks files of an hf:<id> dataset only"):
        DataSource("rows.jsonl", data_files="train.parquet")


def test_source_names(tmp_path: Path) -> None:
    own = write_jsonl(tmp_path / "own.jsonl", [{**GOOD, "source": "aime24"}, GOOD])
    data = PromptDataModule(
        val=[DataSource(own), DataSource(own, name="renamed"), DataSource("toy:math", limit=2, name="toy")]
    )
    data.setup("validate")
    assert data.datasets["val"]["source"] == ["aime24", "own", "renamed", "renamed", "toy", "toy"]


def test_benchmark_source(tmp_path: Path) -> None:
    fixture = str(Path(__file__).parent / "fixtures" / "livecodebench_lite.jsonl")
    window = {"start_date": None, "end_date": None}
    data = PromptDataModule(
        test=[DataSource("benchmark:livecodebench", file=fixture, options=window, limit=3)], eval_batch_size=8
    )
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    assert [row["id"] for row in batch] == ["abc901_a", "3901", "2051A"]
    assert {row["source"] for row in batch} == {"livecodebench"} and {row["domain"] for row in batch} == {"code"}


def test_weighted_training_sources_are_mixed_by_weight(tmp_path: Path) -> None:
    def rows(tag: str) -> list[dict]:
        return [{**GOOD, "id": f"{tag}{i}", "source": tag} for i in range(500)]

    sources = [
        DataSource(write_jsonl(tmp_path / "a.jsonl", rows("a")), weight=3.0),
        DataSource(write_jsonl(tmp_path / "b.jsonl", rows("b")), weight=1.0),
    ]
    for mixing in ("all_exhausted", "first_exhausted"):
        data = PromptDataModule(train=sources, mixing=mixing, seed=1)
        data.setup("fit")
        drawn = Counter(data.datasets["train"]["source"])
        assert 0.70 < drawn["a"] / (drawn["a"] + drawn["b"]) < 0.80, (mixing, drawn)
        assert (min(drawn.values()) >= 500) == (mixing == "all_exhausted")
    with pytest.raises(ValueError, match="weight must be positive"):
        DataSource("toy:math", weight=0)


def test_training_prompts_longer_than_the_limit_are_dropped_and_counted_evaluation_sets_stay_whole(
    tmp_path: Path, caplog
) -> None:
    build_tokenizer().save_pretrained(tmp_path / "tokenizer")
    lengths = {"short": 5, "edge": 40, "long": 41, "longer": 300}
    rows = [{**GOOD, "id": name, "prompt": [{"role": "user", "content": "x" * n}]} for name, n in lengths.items()]
    tokenizer = build_tokenizer()
    overhead = len(tokenizer(render_prompts(tokenizer, rows[:1]), add_special_tokens=False)["input_ids"][0]) - 5
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    data = PromptDataModule(
        train=[DataSource(path)],
        val=[DataSource(path)],
        tokenizer=str(tmp_path / "tokenizer"),
        max_prompt_length=40 + overhead,
    )
    with caplog.at_level(logging.INFO, logger="gopd_lightning.data.datamodule"):
        data.setup("fit")
    assert data.datasets["train"]["id"] == ["short", "edge"]
    assert f"train: dropped 2 of 4 prompts longer than max_prompt_length={40 + overhead} tokens" in caplog.text
    assert data.datasets["val"]["id"] == list(lengths)  # a benchmark is scored whole
    assert "val: dropped" not in caplog.text
    without_tokenizer = PromptDataModule(train=[DataSource(path)], max_prompt_length=10)
    without_tokenizer.setup("fit")
    assert len(without_tokenizer.datasets["train"]) == 4


def test_unsupported_file_and_empty_source_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("id,domain\n")
    with pytest.raises(ValueError, match=r"rows.csv: unsupported file type"):
        PromptDataModule(train=[DataSource(str(tmp_path / "rows.csv"))]).setup("fit")
    path = write_jsonl(tmp_path / "easy.jsonl", [deepmath_row("Find x.", 1.0)])
    with pytest.raises(ValueError, match=r"train source .*easy.jsonl' has no rows"):
        PromptDataModule(train=[DataSource(path, min_difficulty=6)]).setup("fit")


def test_domain_filter_keeps_only_the_named_domains(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, {**GOOD, "id": "b", "domain": "code"}])
    data = PromptDataModule(train=[DataSource(path, domains=["code"])])
    data.setup("fit")
    assert [row["id"] for row in data.datasets["train"]] == ["b"]


@pytest.mark.parametrize(("problems", "world", "batch"), [(5, 2, 2), (30, 8, 256), (7, 3, 2), (2, 4, 1)])
def test_evaluation_counts_every_problem_once_on_any_number_of_ranks(problems: int, world: int, batch: int) -> None:
    from torch.utils.data import DataLoader

    from gopd_lightning.data.datamodule import EvalSampler, WithPadding

    dataset = datasets.Dataset.from_list([{**GOOD, "id": str(i)} for i in range(problems)])
    batches = []
    for rank in range(world):
        loader = DataLoader(
            WithPadding(dataset), batch_size=batch, sampler=EvalSampler(dataset, world, rank), collate_fn=list
        )
        batches.append(list(loader))
    assert len({len(rank_batches) for rank_batches in batches}) == 1  # every rank runs as many steps
    scored = [row["id"] for rank_batches in batches for b in rank_batches for row in b if not row.get("padding")]
    assert sorted(scored, key=int) == [str(i) for i in range(problems)]
