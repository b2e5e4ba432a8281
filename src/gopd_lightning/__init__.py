"""gopd-lightning: Generalized On-Policy Distillation (G-OPD / ExOPD) of LLMs with PyTorch Lightning."""

from gopd_lightning.data import DataSource, PromptDataModule
from gopd_lightning.module import GOPDModule
from gopd_lightning.objective import policy_gradient_loss, token_advantages
from gopd_lightning.policy import PolicyModule, UpdateConfig
from gopd_lightning.rollout import SamplingConfig

__all__ = [
    "DataSource",
    "GOPDModule",
    "PolicyModule",
    "PromptDataModule",
    "SamplingConfig",
    "UpdateConfig",
    "policy_gradient_loss",
    "token_advantages",
]
