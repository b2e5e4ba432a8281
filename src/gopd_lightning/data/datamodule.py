"""``PromptDataModule``: serves batches of prompt rows (lists of dicts) for rollouts.

Batches are plain lists of rows: the LightningModule renders prompts with each model's own chat
template, so the data stays independent of any tokenizer (the optional prompt-length filter only
reads the student's tokenizer to drop prompts that would not fit).
"""

from __future__ import annotations

import logging
from typing import Literal

import datasets
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from gopd_lightning.data.benchmarks import load_benchmark
from gopd_lightning.data.schema import Row, rows_dataset
from gopd_lightning.data.sources import BENCHMARK_PREFIX, TOY_PREFIX, DataSource, read_source
from gopd_lightning.models import load_tokenizer
from gopd_lightning.rollout import render_prompts

log = logging.getLogger(__name__)
Mixing = Literal["all_exhausted", "first_exhausted", "all_exhausted_without_replacement"]
TOKENIZE_CHUNK = 1024


def load_rows(source: DataSource) -> list[Row]:
    """The schema rows of ``source``, each with its ``source`` name; a malformed row raises with its location."""
    if source.path.startswith(TOY_PREFIX):
        from gopd_lightning.toy.tasks import toy_rows

        rows = toy_rows(source.path[len(TOY_PREFIX) :], source.limit or 1024, source.seed, source.split)
    elif source.path.startswith(BENCHMARK_PREFIX):
        rows = load_benchmark(source.default_name, source.file, **source.options).to_list()[: source.limit]
    else:
        rows = read_source(source)
    if source.domains is not None:
        rows = [row for row in rows if row["domain"] in source.domains]
    return [{**row, "source": source.name or row.get("source") or source.default_name} for row in rows]


def prompt_lengths(tokenizer: PreTrainedTokenizerBase, rows: list[Row]) -> list[int]:
    """Token counts of the rows' chat-templated prompts, as the student's tokenizer renders them."""
    lengths = []
    for start in range(0, len(rows), TOKENIZE_CHUNK):
        texts = render_prompts(tokenizer, rows[start : start + TOKENIZE_CHUNK])
        lengths += [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return lengths


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
        tokenizer: str | None = None,
        max_prompt_length: int | None = None,
        mixing: Mixing = "all_exhausted",
        seed: int = 0,
    ) -> None:
        """
        Args:
            train: sources of training prompts (concatenated, or mixed by weight when a source sets ``weight``).
            val: sources of validation prompts (concatenated).
            test: sources of test prompts (concatenated).
            batch_size: prompts per training step (the rollout batch, before samples per prompt).
            eval_batch_size: prompts per validation/test batch.
            num_workers: data-loading worker processes.
            tokenizer: the student's tokenizer (path or hub id); with ``max_prompt_length``, longer prompts are dropped.
            max_prompt_length: drop prompts whose chat-templated length exceeds this many tokens.
            mixing: when weighted training sources run out (``datasets.interleave_datasets`` stopping strategy):
                "all_exhausted" oversamples until every source was seen whole, "first_exhausted" stops at the
                first exhausted source.
            seed: seed of the weighted mixing.
        """
        super().__init__()
        self.sources = {"train": train or [], "val": val or [], "test": test or []}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        self.mixing = mixing
        self.seed = seed
        self.datasets: dict[str, datasets.Dataset] = {}

    @property
    def domains(self) -> set[str]:
        """Every domain present in the loaded training rows."""
        return set(self.datasets["train"]["domain"]) if "train" in self.datasets else set()

    def setup(self, stage: str) -> None:
        for split, sources in self.sources.items():
            if split not in self.datasets and sources:
                parts = [load_rows(source) for source in sources]
                if self.tokenizer is not None and self.max_prompt_length is not None:
                    parts = self._drop_long_prompts(split, parts)
                for source, rows in zip(sources, parts, strict=True):
                    if not rows:
                        raise ValueError(f"{split} source {source.path!r} has no rows (after its filters)")
                self.datasets[split] = self._combine(split, sources, parts)
                log.info("%s: %d rows from %s", split, len(self.datasets[split]), [s.path for s in sources])

    def _drop_long_prompts(self, split: str, parts: list[list[Row]]) -> list[list[Row]]:
        """The rows whose prompts fit ``max_prompt_length``; logs how many were dropped."""
        tokenizer, kept = load_tokenizer(self.tokenizer), []
        for rows in parts:
            lengths = prompt_lengths(tokenizer, rows)
            kept.append([row for row, length in zip(rows, lengths, strict=True) if length <= self.max_prompt_length])
        dropped = sum(map(len, parts)) - sum(map(len, kept))
        log.info(
            "%s: dropped %d of %d prompts longer than max_prompt_length=%d tokens",
            split,
            dropped,
            sum(map(len, parts)),
            self.max_prompt_length,
        )
        return kept

    def _combine(self, split: str, sources: list[DataSource], parts: list[list[Row]]) -> datasets.Dataset:
        """One dataset of the split: weighted interleaving of training sources, else concatenation."""
        parts = [rows_dataset(rows) for rows in parts]
        if split != "train" or len(parts) == 1 or all(source.weight is None for source in sources):
            return datasets.concatenate_datasets(parts)
        weights = [1.0 if source.weight is None else source.weight for source in sources]
        return datasets.interleave_datasets(
            parts,
            probabilities=[weight / sum(weights) for weight in weights],
            seed=self.seed,
            stopping_strategy=self.mixing,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches; none (so ``fit`` skips validation) when no val source is set."""
        if not self.sources["val"]:
            return []
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
