"""Callbacks of gopd-lightning: what a run logs and keeps (all in the shared defaults, ``defaults.yaml``).

- :class:`StepStatistics`: each training step's loss and rollout statistics, synced over ranks;
- :class:`BenchmarkAccuracy`: each evaluation's benchmark scores, logged and written as tables;
- :class:`RunCheckpoint`: checkpoints that resume, including the last step of a run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from gopd_lightning.checkpointing import NonFiniteError
from gopd_lightning.step_stats import RolloutStatistics, rollout_statistics


class StepStatistics(pl.Callback):
    """Log ``train/<name>`` for every training step: the loss and the step's rollout statistics.

    A module's ``training_step`` returns ``{"loss": ..., "statistics": RolloutStatistics}``. Every
    value is exact over the whole global batch (ranks exchange sums and counts; the loss is the
    mean over ranks), overall and, when the ranks hold several domains, per domain
    (``train/math/accuracy``). Besides the module's own statistics (entropy, reverse KL,
    advantage, accuracy, reward, ...) it logs ``response_length``, ``response_length_max`` and
    ``truncated`` (the share of responses cut at ``max_new_tokens``).
    """

    def __init__(self, prog_bar: Sequence[str] = ("loss", "reverse_kl", "accuracy", "reward")) -> None:
        """
        Args:
            prog_bar: statistics also shown in the progress bar (overall values, when the step has them).
        """
        self.prog_bar = set(prog_bar)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        statistics = outputs.get("statistics") if isinstance(outputs, Mapping) else None
        if not isinstance(statistics, RolloutStatistics):
            return
        size = len(statistics.rollout.rows)
        for key, value in rollout_statistics(statistics, trainer.strategy.all_gather).items():
            pl_module.log(f"train/{key}", value, prog_bar=key in self.prog_bar, batch_size=size)
        if "loss" in outputs:  # the mean over ranks
            pl_module.log(
                "train/loss", outputs["loss"], prog_bar="loss" in self.prog_bar, batch_size=size, sync_dist=True
            )


class BenchmarkAccuracy(pl.Callback):
    """Log each validation/test run's benchmark scores and write them as ``results-<stage>.{md,json}``.

    The module's ``scores`` (:class:`~gopd_lightning.metrics.BenchmarkScores`, reduced across
    ranks) give ``<stage>/accuracy`` (avg@k), any pass@k, the problem count and the mean response
    length: overall, per domain and per benchmark. The tables (rows: the whole evaluation, each
    domain and each benchmark) go to the run directory unless ``tables`` is off.
    """

    def __init__(self, tables: bool = True) -> None:
        self.tables = tables
        self.results: dict[str, dict[str, float]] = {}
        """The last logged scores of each stage."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module, "test")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "test")

    def _log(self, pl_module: pl.LightningModule, stage: str) -> None:
        scores = getattr(pl_module, "scores", None)
        if scores is None or stage not in scores:
            return
        results = {f"{stage}/{key}": float(value) for key, value in scores[stage].compute().items()}
        self.results[stage] = results
        for key, value in results.items():
            pl_module.log(key, value, prog_bar=key == f"{stage}/accuracy")

    def _write(self, trainer: pl.Trainer, stage: str) -> None:
        results = self.results.get(stage)
        log_dir = trainer.log_dir  # a broadcast: every rank must ask, or they fall out of step
        if not self.tables or not results or not trainer.is_global_zero or trainer.sanity_checking:
            return
        table = results_by_group(results, stage)
        folder = Path(log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"stage": stage, "global_step": trainer.global_step, "results": table}
        (folder / f"results-{stage}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (folder / f"results-{stage}.md").write_text(
            markdown_table(table, f"{stage} results at step {trainer.global_step}")
        )


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes ``last.ckpt`` when training ends.

    Lightning's own callback writes ``last.ckpt`` only when a periodic save happens, so the steps
    after the last ``every_n_train_steps`` multiple would be lost; this one always saves the final
    student (and optimiser) state, which ``--ckpt_path`` resumes from.
    """

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Save on an exception (``save_on_exception``), except a non-finite step: the last checkpoint is kept."""
        if isinstance(exception, NonFiniteError):
            rank_zero_warn(f"not saving a checkpoint after the error ({exception}); the last one is kept")
            return
        super().on_exception(trainer, pl_module, exception)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and self.dirpath is not None:
            path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            trainer.save_checkpoint(path)
            self.last_model_path = str(path)


def results_by_group(results: dict[str, float], stage: str) -> dict[str, dict[str, float]]:
    """``{"val/benchmark/aime24/accuracy": x}`` -> ``{"benchmark/aime24": {"accuracy": x}}``."""
    table: dict[str, dict[str, float]] = {}
    for key, value in results.items():
        group, _, metric = key.removeprefix(f"{stage}/").rpartition("/")
        table.setdefault(group or "all", {})[metric] = value
    return table


def markdown_table(table: dict[str, dict[str, float]], title: str) -> str:
    """A markdown table with one row per group and one column per metric."""
    columns = sorted({metric for row in table.values() for metric in row}, key=_column_order)
    lines = [f"## {title}", "", "| group | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for group in sorted(table, key=lambda g: (g != "all", g)):
        cells = [_format(table[group].get(column)) for column in columns]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _column_order(metric: str) -> tuple[int, str]:
    order = {"problems": 0, "accuracy": 1, "response_length": 9}
    return order.get(metric, 5), metric


def _format(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if float(value).is_integer() and value > 1 else f"{value:.4f}"
