"""Callbacks of gopd-lightning."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes ``last.ckpt`` when training ends.

    Lightning's own callback writes ``last.ckpt`` only when a periodic save happens, so the steps
    after the last ``every_n_train_steps`` multiple would be lost; this one always saves the final
    student (and optimiser) state, which ``--ckpt_path`` resumes from.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and self.dirpath is not None:
            path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            trainer.save_checkpoint(path)
            self.last_model_path = str(path)
