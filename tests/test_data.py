"""The DataModule and its sources: toy rows, JSONL rows, and malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gopd_lightning.data import DataSource, PromptDataModule


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
    assert isinstance(batch, list) and len(batch) == 4 and set(batch[0]) == {"id", "domain", "prompt", "ground_truth"}


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
    with pytest.raises(ValueError, match="no val data"):
        data.val_dataloader()
