"""Callbacks of gopd-lightning."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from gopd_lightning.checkpointing import NonFiniteError


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


class ResultsTable(pl.Callback):
    """Write the benchmark table of each validation/test run as ``results-<stage>.{md,json}``.

    Rows are the whole evaluation, each domain and each benchmark; columns are the problems,
    avg@k accuracy, any pass@k and the mean response length. Files go to the run directory.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, "test")

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        results = getattr(pl_module, "eval_results", {}).get(stage)
        log_dir = trainer.log_dir  # a broadcast: every rank must ask, or they fall out of step
        if not results or not trainer.is_global_zero or trainer.sanity_checking:
            return
        table = results_by_group(results, stage)
        folder = Path(log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"stage": stage, "global_step": trainer.global_step, "results": table}
        (folder / f"results-{stage}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (folder / f"results-{stage}.md").write_text(
            markdown_table(table, f"{stage} results at step {trainer.global_step}")
        )


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
