"""``PromptDataModule``: serves batches of prompt rows (lists of dicts) for rollouts.

Batches are plain lists of rows: the LightningModule renders prompts with each model's own chat
template, so the data stays independent of any tokenizer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from gopd_lightning.data.schema import Row, validate_row

log = logging.getLogger(__name__)
TOY_PREFIX = "toy:"


@dataclass
class DataSource:
    """Where rows come from."""

    path: str
    """``toy:<family>`` (the offline toy world) or a JSONL file of rows in the project's schema."""
    split: str = "train"
    """Split of the source (toy: "train" or "val")."""
    limit: int | None = None
    """At most this many rows (a toy source generates exactly this many; default 1024)."""
    seed: int = 0
    """Seed of a generated source."""


class RowDataset(Dataset):
    """A list of schema rows."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Row:
        return self.rows[index]


def load_rows(source: DataSource) -> list[Row]:
    """The schema rows of ``source``; a malformed row raises with its file and row number."""
    if source.path.startswith(TOY_PREFIX):
        from gopd_lightning.toy.tasks import toy_rows

        return toy_rows(source.path[len(TOY_PREFIX) :], source.limit or 1024, source.seed, source.split)
    path = Path(source.path)
    if not path.is_file():
        raise FileNotFoundError(f"data source {source.path!r} is neither a toy source nor an existing file")
    rows = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            rows.append(validate_row(raw, f"{path}:{number}"))
            if source.limit is not None and len(rows) >= source.limit:
                break
    return rows


class PromptDataModule(LightningDataModule):
    """Train, validation and test prompts from one or more sources each."""

    def __init__(
        self,
        train: list[DataSource] | None = None,
        val: list[DataSource] | None = None,
        test: list[DataSource] | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:
        """
        Args:
            train: sources of training prompts (concatenated).
            val: sources of validation prompts.
            test: sources of test prompts.
            batch_size: prompts per training step (the rollout batch, before samples per prompt).
            eval_batch_size: prompts per validation/test batch.
            num_workers: data-loading worker processes.
        """
        super().__init__()
        self.sources = {"train": train or [], "val": val or [], "test": test or []}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, RowDataset] = {}

    @property
    def domains(self) -> set[str]:
        """Every domain present in the loaded training rows."""
        return {row["domain"] for row in self.datasets.get("train", RowDataset([])).rows}

    def setup(self, stage: str) -> None:
        for split, sources in self.sources.items():
            if split not in self.datasets and sources:
                rows = [row for source in sources for row in load_rows(source)]
                log.info("%s: %d rows from %s", split, len(rows), [s.path for s in sources])
                self.datasets[split] = RowDataset(rows)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"no {split} data: set data.{split} to at least one source")
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            collate_fn=list,
            num_workers=self.num_workers,
        )
