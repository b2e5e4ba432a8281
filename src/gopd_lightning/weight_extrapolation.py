"""ExPO, the paper's weight-extrapolation baseline: ``theta = theta_1 + alpha * (theta_1 - theta_0)``.

``theta_0`` is the model before training (e.g. the student's initial weights) and ``theta_1`` after
it (e.g. the OPD-trained student); ``alpha > 0`` moves further along the direction training took.
Either model is named as anywhere else (a path, hub id or ``toy:<name>``) or is a checkpoint of
a student trained by our modules: a Lightning ``.ckpt`` (state dict keys ``student.<HF key>``) or
an FSDP2 checkpoint folder, read as ``gopd export`` reads it (architecture and tokenizer from the
hyperparameters, a LoRA adapter merged).

    gopd expo toy:base runs/toy-opd/<run>/checkpoints/last.ckpt --alpha 0.5 --output runs/expo-0.5

The result is a Hugging Face checkpoint (``save_pretrained`` plus the tokenizer) that any config
can name as a model. The arithmetic is done in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gopd_lightning.export import is_distributed_checkpoint, load_student
from gopd_lightning.models import DTYPES, check_same_vocabulary, load_causal_lm, load_tokenizer

CHECKPOINT_SUFFIX = ".ckpt"


def load_model(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A float32 causal LM and its tokenizer: a model name, or a checkpoint of a student (LoRA merged)."""
    path = Path(name)
    if name.endswith(CHECKPOINT_SUFFIX) or is_distributed_checkpoint(path):
        module = load_student(path)
        student = module.student.merge_and_unload() if module.hparams.get("lora") else module.student
        return student.float(), module.tokenizer
    return load_causal_lm(name, "float32"), load_tokenizer(name)


def extrapolate_weights(
    theta_0: Mapping[str, Tensor], theta_1: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """``theta_1 + alpha * (theta_1 - theta_0)`` per floating tensor, in float32 (others must be equal).

    A ValueError names the keys or shapes that differ: both must be the same architecture and size.
    """
    if theta_0.keys() != theta_1.keys():
        only_0, only_1 = sorted(theta_0.keys() - theta_1.keys()), sorted(theta_1.keys() - theta_0.keys())
        raise ValueError(
            f"the two models are different architectures: weights only in theta_0 {only_0[:3]}, "
            f"only in theta_1 {only_1[:3]}"
        )
    merged = {}
    for key, after in theta_1.items():
        before = theta_0[key]
        if before.shape != after.shape:
            raise ValueError(
                f"weight {key!r} has shape {tuple(before.shape)} in theta_0 but {tuple(after.shape)} in theta_1"
            )
        if not after.is_floating_point():
            if not torch.equal(before, after):
                raise ValueError(f"non-floating tensor {key!r} differs between the two models")
            merged[key] = after
            continue
        after32 = after.float()
        merged[key] = after32 + alpha * (after32 - before.float())
    return merged


def expo(initial: str, trained: str, alpha: float, output: str | Path, dtype: str = "float32") -> Path:
    """Write the ExPO model of ``initial`` (theta_0) and ``trained`` (theta_1) to ``output``; return it."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    model_0, tokenizer_0 = load_model(initial)
    model, tokenizer = load_model(trained)
    if type(model_0) is not type(model):
        raise ValueError(f"{initial} is a {type(model_0).__name__} but {trained} is a {type(model).__name__}")
    check_same_vocabulary(tokenizer, tokenizer_0, f"theta_0 ({initial})")
    model.load_state_dict(extrapolate_weights(model_0.state_dict(), model.state_dict(), alpha))
    output = Path(output)
    model.to(DTYPES[dtype]).save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output
