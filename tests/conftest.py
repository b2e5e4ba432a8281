"""Shared fixtures: tiny random models with the toy tokenizer, and a prepared toy world."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from gopd_lightning.toy.world import TOY_MODELS, prepare_toy_world
from helpers import save_tiny_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths of tiny random models: a student, two teachers and a reference, all one vocabulary."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "student": save_tiny_model(root / "student", seed=0),
        "teacher": save_tiny_model(root / "teacher", seed=1),
        "teacher_llama": save_tiny_model(root / "teacher-llama", seed=2, arch="llama"),
        "reference": save_tiny_model(root / "reference", seed=3),
    }


@pytest.fixture(scope="session", autouse=True)
def toy_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private GOPD_HOME for the whole session: tests never touch the user's cache."""
    home = tmp_path_factory.mktemp("gopd-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GOPD_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def toy_models(toy_home: Path) -> dict[str, Path]:
    """Every toy model, built once per session; the trees that share no ancestor in parallel processes.

    Tests that run the toy world ask for this first, so the whole world is built in one go.
    """
    return prepare_toy_world(names=TOY_MODELS)


@pytest.fixture
def usable_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring logic is tested everywhere: where the namespace sandbox is unavailable, in weak mode."""
    from gopd_lightning.rewards import sandbox

    try:
        sandbox.check_sandbox()
    except sandbox.SandboxUnavailable:
        monkeypatch.setenv(sandbox.WEAK_ENV, "weak")
