"""Export a trained student in Hugging Face format (``from_pretrained`` loads it); ``gopd export`` runs it.

    gopd export runs/<run>/checkpoints/last.ckpt --output exported/student
    gopd export runs/<run>/checkpoints/last.ckpt --output exported/student --config configs/toy.yaml my-experiment.yaml

The checkpoint is a Lightning checkpoint file (one process, DDP) or a distributed checkpoint folder
(FSDP2: one shard per rank), consolidated here in one process without a process group. The
student is rebuilt the way training built it (``model.student``, its dtype, a LoRA adapter, which
is merged) from the checkpoint's hyperparameters, or from ``--config`` when the original model
moved, and its tokenizer is saved beside it. The exported generation config names the
tokenizer's EOS and PAD explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from gopd_lightning.models import DTYPES
from gopd_lightning.policy import PolicyModule

METADATA_FILE = "meta.pt"
"""What Lightning writes beside the shards of a distributed checkpoint (all but weights and optimiser)."""
STUDENT_ARGS = ("student", "student_dtype", "lora")


def is_distributed_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / METADATA_FILE).is_file()


def load_student(ckpt: Path, hparams: Mapping[str, Any] | None = None) -> PolicyModule:
    """The trained student of a checkpoint (file or distributed folder), as a ``PolicyModule`` on the CPU.

    ``hparams`` (an experiment's model options) replace the checkpoint's own when the original model moved.
    """
    ckpt = Path(ckpt)
    distributed = is_distributed_checkpoint(ckpt)
    checkpoint = torch.load(ckpt / METADATA_FILE if distributed else ckpt, map_location="cpu", mmap=True)
    hparams = hparams or checkpoint["hyper_parameters"]
    args = {key: hparams[key] for key in STUDENT_ARGS if key in hparams}
    module = PolicyModule(**args)
    module.save_hyperparameters(args)  # what configure_model reads (subclasses save their own)
    module.configure_model()
    if distributed:
        state = {"state_dict": module.state_dict()}
        dcp.load(state, checkpoint_id=ckpt, no_dist=True)  # fills the student's tensors in place
    else:
        module.load_state_dict(checkpoint["state_dict"])
    return module


def export_student(ckpt: Path, out: Path, hparams: Mapping[str, Any] | None = None, dtype: str | None = None) -> Path:
    """Write the checkpoint's student and tokenizer to ``out``; weights in ``dtype`` (default: as trained)."""
    module = load_student(ckpt, hparams)
    student, tokenizer = module.student, module.tokenizer
    if module.hparams.get("lora"):
        student = student.merge_and_unload()
    if dtype is not None:
        student = student.to(DTYPES[dtype])
    student.generation_config.eos_token_id = tokenizer.eos_token_id
    student.generation_config.pad_token_id = tokenizer.pad_token_id
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)
