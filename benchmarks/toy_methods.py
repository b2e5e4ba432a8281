"""The toy-world method table: every model and method after the same number of steps.

    python benchmarks/toy_methods.py [--steps 300] [--out runs/toy-methods]

Evaluates the prepared toy models as they are (``gopd validate``), then trains each method from
its shipped config for ``--steps`` steps (``gopd fit``), extrapolates the OPD student from the base
(ExPO, ``gopd expo --alpha``), and prints one markdown table of the final validation accuracy
(avg@k at temperature 1) per domain, read from each run's results-val.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).parents[1] / "configs"
MODELS = {  # name -> (config whose validation data is used, student override)
    "base": ("multi_teacher_exopd", "toy:base"),
    "teacher-math": ("multi_teacher_exopd", "toy:teacher-math"),
    "teacher-code": ("multi_teacher_exopd", "toy:teacher-code"),
    "big-base": ("strong_to_weak_exopd", "toy:big-base"),
    "big-teacher-math": ("strong_to_weak_exopd", "toy:big-teacher-math"),
}
METHODS = ["sft", "opd", "exopd", "grpo", "multi_teacher_exopd", "strong_to_weak_exopd", "strong_to_weak_exopd_rc"]


def gopd(*args: str) -> None:
    """Run one ``gopd`` command; on failure show the end of its output and stop."""
    print("$ gopd " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "gopd_lightning.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"gopd {args[0]} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def experiment(name: str) -> list[str]:
    """The toy experiment ``name`` as ``gopd`` arguments: the toy piece, then the experiment."""
    return ["-c", str(CONFIGS / "toy.yaml"), "-c", str(CONFIGS / "toy" / f"{name}.yaml")]


def validate(config: str, student: str, run: Path) -> None:
    """``gopd validate`` of ``student`` on the validation data of toy config ``config``."""
    gopd(
        "validate",
        *experiment(config),
        f"--model.student={student}",
        f"--trainer.default_root_dir={run}",
    )


def accuracies(run: Path) -> dict[str, float]:
    table = json.loads((run / "results-val.json").read_text())["results"]
    return {
        group.removeprefix("domain/"): row["accuracy"] for group, row in table.items() if group.startswith("domain/")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--alpha", type=float, default=0.5, help="ExPO extrapolation of the OPD student")
    parser.add_argument("--out", default="runs/toy-methods")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for name, (config, student) in MODELS.items():
        run = out / f"model-{name}"
        validate(config, student, run)
        rows.append((name, "as prepared", accuracies(run), 0.0))
    for method in METHODS:
        run = out / method
        started = time.perf_counter()
        gopd(
            "fit",
            *experiment(method),
            # steps are rollout batches (GRPO makes several optimiser updates of one batch)
            "--trainer.max_steps=-1",
            "--trainer.max_epochs=1",
            f"--trainer.limit_train_batches={args.steps}",
            f"--trainer.val_check_interval={args.steps}",
            f"--trainer.default_root_dir={run}",
            "--validate_before_fit=false",
        )
        rows.append((method, f"{args.steps} steps", accuracies(run), time.perf_counter() - started))
    started = time.perf_counter()
    expo_model, run = out / f"expo-{args.alpha}", out / f"expo-{args.alpha}-val"
    gopd(
        "expo",
        "toy:base",
        str(out / "opd" / "checkpoints" / "last.ckpt"),
        f"--alpha={args.alpha}",
        f"--output={expo_model}",
    )
    validate("opd", str(expo_model), run)
    rows.append(
        (
            f"ExPO alpha={args.alpha} (base -> opd)",
            f"{args.steps} steps",
            accuracies(run),
            time.perf_counter() - started,
        )
    )
    domains = sorted({d for _, _, acc, _ in rows for d in acc})
    print("| model / method | training | " + " | ".join(f"{d} accuracy" for d in domains) + " | wall s |")
    print("|---" * (len(domains) + 3) + "|")
    for name, training, acc, wall in rows:
        cells = [f"{acc[d]:.3f}" if d in acc else "" for d in domains]
        print(f"| {name} | {training} | " + " | ".join(cells) + f" | {wall:.0f} |")


if __name__ == "__main__":
    main()
