"""Every notebook runs top to bottom as a script, with its parameters cell swapped for a short run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
SHORT_RUN = 'STEPS = 4\nVAL_PROBLEMS = 16\nRUN_DIR = "run"\n'


def notebook_script(path: Path) -> str:
    """The code cells of a notebook, in order; the cell tagged "parameters" (papermill's convention) replaced."""
    cells = [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]
    tagged = ["parameters" in cell["metadata"].get("tags", []) for cell in cells]
    assert tagged.count(True) == 1, f"{path.name}: needs exactly one code cell tagged 'parameters'"
    return "\n\n".join(
        SHORT_RUN if is_parameters else "".join(cell["source"])
        for cell, is_parameters in zip(cells, tagged, strict=True)
    )


def test_there_is_a_notebook() -> None:
    assert NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, toy_models: dict[str, Path], tmp_path: Path) -> None:
    script = tmp_path / f"{path.stem}.py"
    script.write_text(notebook_script(path))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "held-out accuracy:" in done.stdout and (tmp_path / "run" / "metrics.csv").exists()
