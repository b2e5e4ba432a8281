"""Every notebook runs top to bottom under a real Jupyter kernel, with its parameters cell swapped for a short run,
and is saved with its outputs (plots included), so GitHub shows what a run looks like."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
SHORT_RUNS = {
    "quickstart": 'STEPS = 4\nVAL_PROBLEMS = 16\nRUN_DIR = "run"\n',
    "lambda_sweep": 'LAMBDAS = [1.0, 1.25]\nSTEPS = 4\nVAL_EVERY = 2\nVAL_PROBLEMS = 8\nRUN_DIR = "run"\n',
}
PRINTS = {"quickstart": "held-out accuracy:", "lambda_sweep": "final accuracy by lambda:"}


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def parameters_cell(notebook: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The one code cell tagged "parameters" (papermill's convention)."""
    tagged = [cell for cell in code_cells(notebook) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: needs exactly one code cell tagged 'parameters'"
    return tagged[0]


def printed(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        out.get("text", "") for cell in code_cells(notebook) for out in cell.outputs if out.output_type == "stream"
    )


def test_every_notebook_has_a_short_run() -> None:
    assert {path.stem for path in NOTEBOOKS} == set(SHORT_RUNS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_saved_with_its_outputs(path: Path) -> None:
    """Every code cell ran (in order, once) and left what it shows: the run's prints and at least one plot."""
    notebook = nbformat.read(path, as_version=4)
    cells = code_cells(notebook)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), "run it top to bottom once"
    outputs = [out for cell in cells for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs), "no plot saved"
    assert PRINTS[path.stem] in printed(notebook)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_under_a_kernel(
    path: Path, toy_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = nbformat.read(path, as_version=4)
    parameters_cell(notebook, path.name).source = SHORT_RUNS[path.stem]
    # the kernel is this interpreter's: its kernelspec runs "python" from PATH
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises on the first cell that fails, with its traceback
    assert PRINTS[path.stem] in printed(notebook)
    metrics = sorted((tmp_path / "run").rglob("metrics.csv"))
    assert metrics
    for found in metrics:  # each run writes its own file, each step's value of a metric once
        with found.open() as handle:
            rows = list(csv.DictReader(handle))
        for name in rows[0]:
            if name in ("step", "epoch"):
                continue
            steps = [row["step"] for row in rows if row[name]]
            assert len(steps) == len(set(steps)), f"{found}: {name} logged twice at a step"
