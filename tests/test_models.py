"""Model names: a path that does not exist, or an offline hub, fails at once and names the path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gopd_lightning.models import load_tokenizer, resolve_model_path


@pytest.mark.parametrize("name", ["./students/mine", "/nowhere/model", "runs/exported/model", "~/no-such-model"])
def test_a_missing_local_path_fails_at_once_naming_it(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(ValueError, match=rf"no model folder at '{name}'"):
        load_tokenizer(name)
    assert time.monotonic() - start < 5  # no hub retries


def test_a_mistyped_folder_under_an_existing_one_is_a_path(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no model folder at 'checkpoints/exportd'"):
        resolve_model_path("checkpoints/exportd")


def test_an_offline_hub_fails_at_once_for_an_uncached_repo(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="'someone/not-cached'.*hub is offline"):
        resolve_model_path("someone/not-cached")


def test_a_file_is_not_a_model_folder(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file, not a model folder"):
        resolve_model_path(str(tmp_path / "weights.bin"))
