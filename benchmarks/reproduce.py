"""The paper's comparisons on the toy world: every method from its shipped config, several seeds, resumable.

    python benchmarks/reproduce.py                         # everything, seeds 0 1 2 (hours on 2 cores)
    python benchmarks/reproduce.py --groups lambda_sweep   # one comparison
    python benchmarks/reproduce.py --report                # tables, claims and plots from what has run

Each run is a ``gopd`` command (``fit``, ``validate``, ``expo``) on ``configs/toy.yaml`` and one
``configs/toy/`` experiment, with the run's seed as ``--seed_everything`` and ``--data.seed``; its
directory is ``<out>/<run>-seed<k>``. Every finished run is written at once to the results file
(``benchmarks/results/toy_study.json``): for each, its method, lambda, estimator, seed, steps, wall
time, and its validation accuracy, pass@k, response length and the student's entropy over training.
Runs already in the file are skipped, so a stopped study goes on where it stopped. The report prints
mean +- std over seeds per run, the paper's claims each judged by a fixed rule, and draws the curves
(PNG) into ``benchmarks/results/``.

What was fixed before any seed ran: the toy world (``gopd_lightning.toy.world``), every config's
settings, 600 optimiser steps of 64 responses for every trained method (GRPO: 8 prompts x 8 samples,
one update per step), ExPO's alpha 0.5 from the base to the OPD student, and the judging rule below.
The multi-teacher runs leave their training answers unscored (``train_accuracy: false``: a sandbox run
per code row per step, logged only); their validations score every answer as the others do.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"
RESULTS = ROOT / "benchmarks" / "results"
STEPS = 600
EXPO_ALPHA = 0.5
TRAINING_BIN = 25
"""Steps per point of a plotted training curve (each point the mean over its steps and the seeds)."""


@dataclass(frozen=True)
class Run:
    """One run of the study (repeated per seed)."""

    key: str
    """Name of the run, the same in every comparison that shows it."""
    method: str
    """teacher, SFT, OPD, ExOPD, interpolation, ExPO or GRPO."""
    experiment: str
    """The ``configs/toy/`` experiment it starts from."""
    command: str = "fit"
    """``fit``; ``validate`` (a prepared model as it is); ``expo`` (ExPO of ``source``'s student)."""
    lam: float | None = None
    estimator: str | None = None
    overrides: tuple[str, ...] = ()
    """More ``gopd`` arguments."""
    source: str | None = None
    """ExPO: the run whose student is extrapolated from the base."""


def gopd_run(key: str, lam: float, estimator: str = "sampled", experiment: str = "exopd", *more: str) -> Run:
    method = "OPD" if lam == 1 else "ExOPD" if lam > 1 else "interpolation"
    overrides = (f"--model.lam={lam}", f"--model.estimator={estimator}", *more)
    return Run(key, method, experiment, lam=lam, estimator=estimator, overrides=overrides)


def evaluation(key: str, model: str, experiment: str) -> Run:
    return Run(key, "teacher", experiment, command="validate", overrides=(f"--model.student=toy:{model}",))


TEACHER = evaluation("teacher-math", "teacher-math", "exopd")
OPD, EXOPD = gopd_run("opd", 1.0), gopd_run("exopd", 1.25)
UNSCORED = "--model.train_accuracy=false"  # code answers cost a sandbox run each: only validations score them
S2W_TEACHER = "--model.teachers={math: toy:big-teacher-math}"
GROUPS: dict[str, list[Run]] = {
    "lambda_sweep": [
        TEACHER,
        *(
            gopd_run(f"{'opd' if lam == 1 else 'exopd' if lam == 1.25 else f'lam{lam}'}{suffix}", lam, estimator)
            for estimator, suffix in (("sampled", ""), ("full_vocab", "-full-vocab"))
            for lam in (0.5, 1.0, 1.25, 1.5)
        ),
    ],
    "methods": [
        TEACHER,
        Run("sft", "SFT", "sft"),
        OPD,
        EXOPD,
        Run("expo", "ExPO", "opd", command="expo", source="opd"),
        Run(
            "grpo",
            "GRPO",
            "grpo",
            overrides=(f"--trainer.max_steps={STEPS}", "--data.batch_size=8", "--model.update.updates_per_rollout=1"),
        ),
    ],
    "multi_teacher": [
        evaluation("multi-teacher-math", "teacher-math", "multi_teacher_exopd"),
        evaluation("multi-teacher-code", "teacher-code", "multi_teacher_exopd"),
        gopd_run("multi-opd", 1.0, "sampled", "multi_teacher_exopd", UNSCORED),
        gopd_run("multi-exopd", 1.25, "sampled", "multi_teacher_exopd", UNSCORED),
    ],
    "strong_to_weak": [
        evaluation("s2w-teacher", "big-teacher-math", "strong_to_weak_exopd"),
        Run("s2w-sft", "SFT", "sft", overrides=(S2W_TEACHER,)),
        gopd_run("s2w-opd", 1.0, experiment="strong_to_weak_exopd"),
        gopd_run("s2w-exopd", 1.25, experiment="strong_to_weak_exopd"),
        Run("s2w-exopd-rc", "ExOPD", "strong_to_weak_exopd_rc", lam=1.25, estimator="sampled"),
    ],
}


@dataclass
class Result:
    """What one finished run measured."""

    run: str
    seed: int
    method: str
    experiment: str
    lam: float | None
    estimator: str | None
    steps: int
    wall_s: float
    validation: list[dict[str, float]] = field(default_factory=list)
    """Per validation: step, accuracy, pass@k, response_length, and accuracy per domain."""
    training: list[dict[str, float]] = field(default_factory=list)
    """Per logged training step: step, entropy, response_length, accuracy."""


# ------------------------------------------------------------------------------------------------ running
def gopd(args: list[str], log: Path) -> None:
    """One ``gopd`` command with its output in ``log``; a failure stops the study, naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ gopd " + " ".join(args), flush=True)
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "gopd_lightning.cli", *args], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"gopd {args[0]} failed (exit {done.returncode}); its output: {log}")


def experiment_args(name: str) -> list[str]:
    return ["-c", str(CONFIGS / "toy.yaml"), "-c", str(CONFIGS / "toy" / f"{name}.yaml")]


def execute(run: Run, seed: int, out: Path) -> Result:
    """Run ``run`` at ``seed`` in ``out/<key>-seed<seed>`` and read what it measured."""
    folder = out / f"{run.key}-seed{seed}"
    seeded = [f"--seed_everything={seed}", f"--data.seed={seed}", f"--trainer.default_root_dir={folder}"]
    quiet = ["--trainer.enable_progress_bar=false"]
    started = time.perf_counter()
    if run.command == "expo":
        model = folder / "model"
        source = out / f"{run.source}-seed{seed}" / "checkpoints" / "last.ckpt"
        gopd(["expo", "toy:base", str(source), f"--alpha={EXPO_ALPHA}", f"--output={model}"], folder / "expo.log")
        overrides = (f"--model.student={model}",)
        command = "validate"
    else:
        overrides, command = run.overrides, run.command
    gopd([command, *experiment_args(run.experiment), *overrides, *seeded, *quiet], folder / f"{command}.log")
    validation, training = read_metrics(folder / "metrics.csv")
    steps = int(validation[-1]["step"]) if validation else 0
    fields = {k: v for k, v in asdict(run).items() if k in ("method", "experiment", "lam", "estimator")}
    wall = time.perf_counter() - started
    return Result(run.key, seed, **fields, steps=steps, wall_s=round(wall, 1), validation=validation, training=training)


def read_metrics(path: Path) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Validation and training rows of a run's ``metrics.csv``: the validation scores and the student's
    logged training statistics, one dict per logged step (later rows of a step fill in earlier ones)."""
    validation: dict[int, dict[str, float]] = {}
    training: dict[int, dict[str, float]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            step = int(row["step"])
            for name, value in row.items():
                if not value or name in ("step", "epoch"):
                    continue
                if name.startswith("val/") and "/benchmark/" not in name and not name.endswith("problems"):
                    validation.setdefault(step, {"step": step})[name.removeprefix("val/")] = float(value)
                elif name in ("train/entropy", "train/response_length", "train/accuracy"):
                    training.setdefault(step, {"step": step})[name.removeprefix("train/")] = float(value)
    return [validation[s] for s in sorted(validation)], [training[s] for s in sorted(training)]


def load(path: Path) -> list[Result]:
    if not path.exists():
        return []
    return [Result(**entry) for entry in json.loads(path.read_text())["runs"]]


def save(path: Path, results: list[Result], seeds: list[int]) -> None:
    """Write the results file whole, then move it into place: a stop never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    study = {
        "steps": STEPS,
        "expo_alpha": EXPO_ALPHA,
        "seeds": seeds,
        "groups": {g: [r.key for r in runs] for g, runs in GROUPS.items()},
    }
    partial = path.with_suffix(".json.partial")
    runs = ",\n".join(json.dumps(asdict(r), separators=(",", ":")) for r in results)  # a run per line
    partial.write_text(f'{{"study": {json.dumps(study)},\n"runs": [\n{runs}\n]}}\n')
    os.replace(partial, path)


def study(groups: Iterable[str], seeds: list[int], out: Path, results_file: Path) -> list[Result]:
    """Every run of ``groups`` at every seed that is not in the results file yet, ExPO after its source."""
    results = load(results_file)
    done = {(r.run, r.seed) for r in results}
    runs = list({run.key: run for group in groups for run in GROUPS[group]}.values())
    runs.sort(key=lambda run: run.command == "expo")
    for run in runs:
        for seed in seeds:
            if (run.key, seed) in done:
                continue
            results.append(execute(run, seed, out))
            done.add((run.key, seed))
            save(results_file, results, seeds)
            print(f"  {run.key} seed {seed}: accuracy {final(results[-1])['accuracy']:.3f}", flush=True)
    return results


# ------------------------------------------------------------------------------------------------ report
def final(result: Result) -> dict[str, float]:
    """The last validation, with the student's mean entropy over the last 100 training steps."""
    last = dict(result.validation[-1]) if result.validation else {}
    recent = [row["entropy"] for row in result.training if "entropy" in row and row["step"] > result.steps - 100]
    if recent:
        last["entropy"] = sum(recent) / len(recent)
    return last


def spread(results: list[Result], key: str, metric: str) -> tuple[float, float, int]:
    """Mean, standard deviation (n - 1) and count over seeds of run ``key``'s final ``metric``."""
    values = [final(r)[metric] for r in results if r.run == key and metric in final(r)]
    if not values:
        return math.nan, math.nan, 0
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std, len(values)


def above(results: list[Result], a: str, b: str, metric: str = "accuracy") -> str:
    """The rule every claim is judged by: ``a`` > ``b`` is *reproduced* when the difference of their means
    exceeds the standard deviation of that difference over seeds, *not reproduced* when ``a`` is at or below
    ``b``, and *within noise* in between."""
    (ma, sa, na), (mb, sb, nb) = spread(results, a, metric), spread(results, b, metric)
    if not na or not nb:
        return "not run"
    difference, noise = ma - mb, math.sqrt(sa**2 + sb**2)
    verdict = "reproduced" if difference > noise else "not reproduced" if difference <= 0 else "within noise"
    return f"{verdict} ({a} {ma:.3f} +- {sa:.3f} vs {b} {mb:.3f} +- {sb:.3f})"


def reaches(results: list[Result], a: str, b: str) -> str:
    """``a`` recovers ``b``: *reproduced* when ``a``'s mean is at least ``b``'s minus the noise of the difference."""
    (ma, sa, na), (mb, sb, nb) = spread(results, a, "accuracy"), spread(results, b, "accuracy")
    if not na or not nb:
        return "not run"
    verdict = "reproduced" if ma >= mb - math.sqrt(sa**2 + sb**2) else "not reproduced"
    return f"{verdict} ({a} {ma:.3f} +- {sa:.3f} vs {b} {mb:.3f} +- {sb:.3f})"


def claims(results: list[Result]) -> list[tuple[str, str]]:
    """The paper's claims (../shared/METHOD.md, "What the paper reports") judged on the toy world."""
    return [
        ("OPD recovers the teacher", reaches(results, "opd", "teacher-math")),
        ("0 < lambda < 1 trades accuracy", above(results, "opd", "lam0.5")),
        ("0 < lambda < 1 gives shorter responses", above(results, "opd", "lam0.5", "response_length")),
        ("lambda = 1.25 beats the teacher", above(results, "exopd", "teacher-math")),
        ("lambda = 1.25 beats OPD", above(results, "exopd", "opd")),
        ("lambda = 1.5 can be unstable (less accurate than 1.25)", above(results, "exopd", "lam1.5")),
        ("ExOPD raises response length", above(results, "exopd", "opd", "response_length")),
        ("ExOPD raises entropy", above(results, "exopd", "opd", "entropy")),
        (
            "multi-teacher ExOPD beats the math teacher on math",
            above(results, "multi-exopd", "multi-teacher-math", "domain/math/accuracy"),
        ),
        (
            "multi-teacher ExOPD beats the code teacher on code",
            above(results, "multi-exopd", "multi-teacher-code", "domain/code/accuracy"),
        ),
        (
            "multi-teacher OPD beats the math teacher on math",
            above(results, "multi-opd", "multi-teacher-math", "domain/math/accuracy"),
        ),
        (
            "multi-teacher OPD beats the code teacher on code",
            above(results, "multi-opd", "multi-teacher-code", "domain/code/accuracy"),
        ),
        ("strong-to-weak: ExOPD beats OPD", above(results, "s2w-exopd", "s2w-opd")),
        ("strong-to-weak: ExOPD beats SFT", above(results, "s2w-exopd", "s2w-sft")),
        ("strong-to-weak: reward correction adds more", above(results, "s2w-exopd-rc", "s2w-exopd")),
        # the same-size baselines on the same budget (the paper compares with them; METHOD.md lists no claim)
        ("same-size: ExOPD beats SFT", above(results, "exopd", "sft")),
        ("same-size: ExOPD beats ExPO", above(results, "exopd", "expo")),
        ("same-size: ExOPD beats GRPO", above(results, "exopd", "grpo")),
        # not the paper's: the estimator only this suite has
        ("(ours) full-vocabulary ExOPD matches sampled ExOPD", reaches(results, "exopd-full-vocab", "exopd")),
        ("(ours) full-vocabulary OPD beats sampled OPD", above(results, "opd-full-vocab", "opd")),
    ]


def report(results: list[Result]) -> None:
    """Print the table of every run (mean +- std over seeds) and the claims; draw the plots."""
    keys = list(dict.fromkeys(r.run for r in results))
    print("| run | method | lambda | estimator | seeds | accuracy | pass@4 | response length | entropy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        first = next(r for r in results if r.run == key)
        cells = []
        for metric in ("accuracy", "pass@4", "response_length", "entropy"):
            mean, std, n = spread(results, key, metric)
            cells.append(f"{mean:.3f} +- {std:.3f}" if n else "")
        n = spread(results, key, "accuracy")[2]
        lam = "" if first.lam is None else f"{first.lam:g}"
        print(f"| {key} | {first.method} | {lam} | {first.estimator or ''} | {n} | " + " | ".join(cells) + " |")
    print("\n| claim | on the toy world |\n|---|---|")
    for claim, verdict in claims(results):
        print(f"| {claim} | {verdict} |")
    plot(results)


def plot(results: list[Result]) -> None:
    """Curves of validation accuracy, response length and entropy per comparison, mean and range over seeds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[notebooks]'): no plots")
        return
    for group, runs in GROUPS.items():
        curves = [run for run in runs if any(r.run == run.key and len(r.validation) > 1 for r in results)]
        if not curves:
            continue
        figure, axes = plt.subplots(1, 3, figsize=(15, 4))
        for run in curves:
            for axis, metric in zip(axes, ("accuracy", "response_length", "entropy"), strict=True):
                source = "training" if metric == "entropy" else "validation"
                seeds = [getattr(r, source) for r in results if r.run == run.key]
                width = TRAINING_BIN if source == "training" else 1  # training statistics: per 25 steps
                steps = sorted({row["step"] // width * width for rows in seeds for row in rows if metric in row})
                by_step = [
                    [
                        row[metric]
                        for rows in seeds
                        for row in rows
                        if row["step"] // width * width == s and metric in row
                    ]
                    for s in steps
                ]
                means = [sum(v) / len(v) for v in by_step]
                (line,) = axis.plot(steps, means, label=run.key)
                axis.fill_between(
                    steps, [min(v) for v in by_step], [max(v) for v in by_step], alpha=0.15, color=line.get_color()
                )
        for run in runs:
            if run.command == "validate" and spread(results, run.key, "accuracy")[2]:
                axes[0].axhline(spread(results, run.key, "accuracy")[0], linestyle="--", color="gray", label=run.key)
        for axis, title in zip(
            axes, ("validation accuracy", "validation response length", "training entropy"), strict=True
        ):
            axis.set_title(title)
            axis.set_xlabel("step")
        axes[0].legend(fontsize=7)
        figure.suptitle(f"toy world: {group.replace('_', ' ')} (mean over seeds, shaded: range)")
        figure.tight_layout()
        figure.savefig(RESULTS / f"toy_study_{group}.png", dpi=90)
        plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study", help="run directories")
    parser.add_argument("--results", type=Path, default=RESULTS / "toy_study.json")
    parser.add_argument("--report", action="store_true", help="only report what the results file holds")
    args = parser.parse_args()
    started = time.perf_counter()
    results = load(args.results) if args.report else study(args.groups, args.seeds, args.out, args.results)
    report(results)
    print(f"\nstudy wall time this call: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
