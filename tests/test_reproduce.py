"""The toy study's bookkeeping: resumable runs, metrics read back from a run, claims judged by one fixed rule."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "reproduce.py"
spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
reproduce = importlib.util.module_from_spec(spec)
sys.modules["reproduce"] = reproduce  # its dataclasses look their module up there
spec.loader.exec_module(reproduce)


def result(run: str, seed: int, accuracy: float, **final: float) -> reproduce.Result:
    validation = [{"step": 0, "accuracy": 0.3}, {"step": 599, "accuracy": accuracy, **final}]
    return reproduce.Result(run, seed, "OPD", "opd", 1.0, "sampled", 599, 1.0, validation, [])


def test_a_stopped_study_goes_on_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executed, stop_at = [], ("grpo", 1)

    def execute(run: reproduce.Run, seed: int, out: Path) -> reproduce.Result:
        if (run.key, seed) == stop_at:
            raise KeyboardInterrupt  # the study is stopped in the middle of a run
        executed.append((run.key, seed))
        return result(run.key, seed, 0.5)

    monkeypatch.setattr(reproduce, "execute", execute)
    results_file = tmp_path / "study.json"
    with pytest.raises(KeyboardInterrupt):
        reproduce.study(["methods"], [0, 1], tmp_path, results_file)
    finished = [(r["run"], r["seed"]) for r in json.loads(results_file.read_text())["runs"]]
    assert finished == executed and ("grpo", 0) in finished  # every finished run kept, the stopped one not

    stop_at, before = None, len(executed)
    reproduce.study(["methods"], [0, 1], tmp_path, results_file)
    assert executed[before:] == [("grpo", 1), ("expo", 0), ("expo", 1)]  # only what had not finished
    finished = [(r["run"], r["seed"]) for r in json.loads(results_file.read_text())["runs"]]
    assert len(finished) == len(set(finished)) == 2 * len(reproduce.GROUPS["methods"])


def test_expo_runs_after_the_run_it_extrapolates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order = []
    monkeypatch.setattr(
        reproduce, "execute", lambda run, seed, out: order.append(run.key) or result(run.key, seed, 0.5)
    )
    reproduce.study(["methods"], [0], tmp_path, tmp_path / "study.json")
    assert order.index("expo") > order.index("opd")


def test_metrics_are_read_per_step_from_a_runs_csv(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,step,train/entropy,train/loss,val/accuracy,val/pass@4,val/problems,val/benchmark/toy:math/accuracy\n"
        "0,0,,,0.25,0.5,256,0.25\n"
        "0,49,0.9,1.0,,,,\n"
        "0,99,0.8,1.0,,,,\n"
        "0,99,,,0.5,0.75,256,0.5\n"
    )
    validation, training = reproduce.read_metrics(csv)
    assert validation == [{"step": 0, "accuracy": 0.25, "pass@4": 0.5}, {"step": 99, "accuracy": 0.5, "pass@4": 0.75}]
    assert training == [{"step": 49, "entropy": 0.9}, {"step": 99, "entropy": 0.8}]


def test_claims_are_judged_by_the_difference_against_its_noise() -> None:
    clear = [result("a", s, v) for s, v in enumerate((0.60, 0.62, 0.61))] + [
        result("b", s, v) for s, v in enumerate((0.50, 0.52, 0.51))
    ]
    assert reproduce.above(clear, "a", "b").startswith("reproduced")
    assert reproduce.above(clear, "b", "a").startswith("not reproduced")
    noisy = [result("a", s, v) for s, v in enumerate((0.40, 0.60, 0.50))] + [
        result("b", s, v) for s, v in enumerate((0.45, 0.50, 0.49))
    ]
    assert reproduce.above(noisy, "a", "b").startswith("within noise")
    assert reproduce.above(noisy, "a", "missing") == "not run"
    assert reproduce.reaches(noisy, "b", "a").startswith("reproduced")  # 0.48 is within noise of 0.50
    assert reproduce.reaches(clear, "b", "a").startswith("not reproduced")
