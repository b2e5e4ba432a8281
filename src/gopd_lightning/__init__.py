"""gopd-lightning: Generalized On-Policy Distillation (G-OPD / ExOPD) of LLMs with PyTorch Lightning.

The names below load on first use, so that a light submodule (the math scorer's worker processes
import ``gopd_lightning.rewards.math``) does not pay for torch, Lightning and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataSource": "gopd_lightning.data",
    "GOPDModule": "gopd_lightning.distillation",
    "GRPOModule": "gopd_lightning.grpo",
    "PolicyModule": "gopd_lightning.policy",
    "PromptDataModule": "gopd_lightning.data",
    "SFTModule": "gopd_lightning.sft",
    "SamplingConfig": "gopd_lightning.rollout",
    "UpdateConfig": "gopd_lightning.policy",
    "policy_gradient_loss": "gopd_lightning.objective",
    "token_advantages": "gopd_lightning.objective",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gopd_lightning' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
