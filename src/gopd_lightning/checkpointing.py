"""Checkpoints that survive a kill, and the error that must not overwrite one.

Lightning writes a checkpoint through fsspec's transaction: the bytes go to a file in the temp
directory, which is then moved onto the target. When the temp directory is on another filesystem
than the run (a tmpfs ``/tmp``, a scratch disk), the move is a copy into the target, and a kill
during it leaves ``last.ckpt`` truncated. :class:`AtomicCheckpointIO` writes next to the target,
flushes to disk, and renames: the target is always either the old checkpoint or the new one.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

TEMP_MARK = ".tmp-"


class NonFiniteError(RuntimeError):
    """A NaN or inf in what a step computed: the run stops before the optimiser step, no checkpoint is written."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic: write a sibling temp file, fsync, rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        target = Path(path)
        if "://" in str(path):  # remote storage has its own semantics
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(target)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        temp = target.with_name(f".{target.name}{TEMP_MARK}{os.getpid()}")
        try:
            with open(temp, "wb") as handle:
                handle.write(buffer.getbuffer())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        _fsync_directory(target.parent)


def remove_stale_temp_files(target: Path) -> None:
    """Delete what a killed save of ``target`` left behind."""
    for stale in target.parent.glob(f".{target.name}{TEMP_MARK}*"):
        stale.unlink(missing_ok=True)


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
