"""``PromptDataModule``: serves batches of prompt rows (lists of dicts) for rollouts.

Batches are plain lists of rows: the LightningModule renders prompts with each model's own chat
template, so the data stays independent of any tokenizer (the optional prompt-length filter only
reads the student's tokenizer to drop prompts that would not fit).

Resuming: the training order is a permutation fixed by (seed, epoch) and dealt round-robin to the
ranks (:class:`ResumableSampler`), so it does not depend on the number of processes. The
datamodule's part of a checkpoint holds the epoch, the prompts of it already trained on and each
rank's random-number state (rollouts sample from it): ``--ckpt_path`` continues the same run.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Literal

import datasets
import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler
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


def prompt_lengths(
    tokenizer: PreTrainedTokenizerBase, rows: list[Row], template_kwargs: dict | None = None
) -> list[int]:
    """Token counts of the rows' chat-templated prompts, as the student's tokenizer renders them."""
    lengths = []
    for start in range(0, len(rows), TOKENIZE_CHUNK):
        texts = render_prompts(tokenizer, rows[start : start + TOKENIZE_CHUNK], template_kwargs)
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
        chat_template_kwargs: dict | None = None,
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
            tokenizer: the student's tokenizer (path or hub id); with ``max_prompt_length``, longer training
                prompts are dropped.
            max_prompt_length: drop training prompts whose chat-templated length exceeds this many tokens
                (evaluation sets are never cut: a benchmark is scored whole).
            chat_template_kwargs: extra arguments of the student's chat template (as the model renders
                prompts; the CLI links the model's).
            mixing: when weighted training sources run out (``datasets.interleave_datasets`` stopping strategy):
                "all_exhausted" oversamples until every source was seen whole, "first_exhausted" stops at the
                first exhausted source.
            seed: seed of the weighted mixing and of the training order.
        """
        super().__init__()
        self.sources = {"train": train or [], "val": val or [], "test": test or []}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.mixing = mixing
        self.seed = seed
        self.datasets: dict[str, datasets.Dataset] = {}
        self.train_sampler: ResumableSampler | None = None
        self._resume: tuple[int, int] | None = None

    @property
    def domains(self) -> set[str]:
        """Every domain present in the loaded training rows."""
        return set(self.datasets["train"]["domain"]) if "train" in self.datasets else set()

    def setup(self, stage: str) -> None:
        for split, sources in self.sources.items():
            if split not in self.datasets and sources:
                parts = [load_rows(source) for source in sources]
                if split == "train" and self.tokenizer is not None and self.max_prompt_length is not None:
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
            lengths = prompt_lengths(tokenizer, rows, self.chat_template_kwargs)
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
        """``batch_size`` prompts per rank and step, in the (seed, epoch) order; a resumed run goes on where it was."""
        kwargs = (self.trainer.distributed_sampler_kwargs if self.trainer else None) or {"num_replicas": 1, "rank": 0}
        dataset = self._split("train")
        self.train_sampler = ResumableSampler(dataset, seed=self.seed, **kwargs)
        if self._resume is not None:
            self.train_sampler.resume(*self._resume)
            self._resume = None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.train_sampler,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.seed),  # its iterators leave the global RNG alone
            collate_fn=list,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches; none (so ``fit`` skips validation) when no val source is set."""
        if not self.sources["val"]:
            return []
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        """Each problem on exactly one rank; ranks hold equally many batches (padding rows fill up, not scored)."""
        kwargs = (self.trainer.distributed_sampler_kwargs if self.trainer else None) or {"num_replicas": 1, "rank": 0}
        dataset = self._split(split)
        sampler = EvalSampler(dataset, num_replicas=kwargs["num_replicas"], rank=kwargs["rank"])
        return DataLoader(
            WithPadding(dataset),
            batch_size=self.eval_batch_size,
            sampler=sampler,
            collate_fn=list,
            num_workers=self.num_workers,
        )

    def _split(self, split: str) -> datasets.Dataset:
        if split not in self.datasets:
            raise ValueError(f"no {split} data: set data.{split} to at least one source")
        return self.datasets[split]

    def state_dict(self) -> dict:
        """Where training stands, for checkpoints: epoch, prompts of it trained on, every rank's RNG state."""
        sampler = self.train_sampler
        if sampler is None:  # not training
            return {}
        batches = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        epoch = sampler.epoch
        if batches >= len(sampler) // self.batch_size:  # the epoch is over
            epoch, batches = epoch + 1, 0
        return {
            "epoch": epoch,
            "consumed": batches * self.batch_size * sampler.num_replicas,
            "rng": _gather(_rng_state()),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume the training order where the checkpoint left it, and this rank's RNG state."""
        self._resume = (state["epoch"], state["consumed"])
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if len(state["rng"]) == world:
            _set_rng_state(state["rng"][rank])
        else:
            log.warning("a checkpoint of %d processes resumed on %d: fresh random states", len(state["rng"]), world)


class ResumableSampler(DistributedSampler):
    """The training order: a permutation fixed by (seed, epoch), dealt round-robin to the ranks.

    The global order is the same for any number of ranks (2 ranks x 2 prompts per step see the
    prompts of 1 rank x 4), and :meth:`resume` starts an epoch after its first prompts.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0
        self.resumed_epoch: int | None = None
        self.epoch_offset = 0

    def resume(self, epoch: int, consumed: int) -> None:
        """Start in ``epoch`` after the first ``consumed`` prompts of its order (all ranks together)."""
        super().set_epoch(epoch)
        self.resumed_epoch = epoch
        self.skip = consumed // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Lightning's epoch count, shifted to the data's.

        A run extended from its final checkpoint counts its epoch as done (Lightning closes the
        epoch at ``max_steps``) although the data is in the middle of it; the shift keeps that order.
        """
        if self.resumed_epoch is not None:
            self.epoch_offset, self.resumed_epoch = self.resumed_epoch - epoch, None
        super().set_epoch(epoch + self.epoch_offset)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.skip :]
        self.skip = 0
        return iter(indices)


class EvalSampler(DistributedSampler):
    """Evaluation order: rank r takes problems r, r + world, ...; short ranks are topped up with padding.

    Lightning's default sampler repeats problems to even the ranks out, and they would be scored
    twice. Here every problem is on exactly one rank, and the top-up indices (``len(dataset) + i``)
    name padding rows (see :class:`WithPadding`) that keep the ranks' batch counts equal (under
    FSDP2 every forward is a collective) but are never scored.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        size = len(self.dataset)
        mine = list(range(self.rank, size, self.num_replicas))
        return iter(mine + [size + i for i in range(self.num_samples - len(mine))])


class WithPadding(Dataset):
    """``dataset`` whose indices past its end give its first rows again, marked ``padding: True``."""

    def __init__(self, dataset: datasets.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Row:
        if index < len(self.dataset):
            return self.dataset[index]
        return {**self.dataset[index - len(self.dataset)], "padding": True}


def _rng_state() -> dict:
    """This process's random-number state (torch CPU and CUDA, python)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather(value: object) -> list:
    """``value`` of every rank, in rank order (a list of one without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values
