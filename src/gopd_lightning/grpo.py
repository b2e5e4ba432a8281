"""``GRPOModule``: the RL that made the paper's domain teachers (a baseline and a teacher factory).

Each prompt is sampled ``sampling.samples_per_prompt`` times; a verifier scores every response
(math-verify for math, the code sandbox for code); each response's advantage is its reward
normalised within its prompt's group (mean 0, std 1) and applies to all its tokens. Updates share
:class:`~gopd_lightning.policy.PolicyModule`'s loop: several optimiser updates per rollout batch
with PPO clipping via ``update.updates_per_rollout`` and ``update.clip_eps``. No KL penalty and no
reference model (the published teacher runs: lr 1e-6, 128 prompts x 8 rollouts).
"""

from __future__ import annotations

from typing import Any

from gopd_lightning.objective import SequenceAdvantages, group_normalized_advantages
from gopd_lightning.policy import PolicyModule
from gopd_lightning.rewards import DOMAINS
from gopd_lightning.step_stats import RolloutStatistics


class GRPOModule(PolicyModule):
    """Group Relative Policy Optimisation with verifier rewards."""

    def __init__(self, student: str, **policy_options: Any) -> None:
        """
        Args:
            student: the policy to train (path, hub id or ``toy:<name>``).
            policy_options: as in :class:`~gopd_lightning.policy.PolicyModule`; here
                ``sampling.samples_per_prompt`` is the group size (8 in the paper), and
                ``update.updates_per_rollout`` > 1 makes PPO's clip matter.
        """
        super().__init__(student, **policy_options)
        if self.sampling.samples_per_prompt < 2:
            raise ValueError("GRPO needs sampling.samples_per_prompt >= 2: advantages compare samples of one prompt")

    def training_step(self, batch: list[dict], batch_idx: int) -> dict[str, Any]:
        unscorable = sorted({row["id"] for row in batch if not row.get("ground_truth") or row["domain"] not in DOMAINS})
        if unscorable:
            raise ValueError(
                f"GRPO needs rows with a ground_truth in a verifiable domain {list(DOMAINS)}; "
                f"these are not: {unscorable[:5]}"
            )
        rollout = self.rollout(batch, self.sampling)
        rewards = self.accuracy(rollout)
        n = self.sampling.samples_per_prompt
        update = self.update_policy(rollout, SequenceAdvantages(group_normalized_advantages(rewards, n)))
        groups = rewards.view(-1, n)
        per_row = {  # a group's statistics repeated on its rows: the row mean is the group mean
            "reward": rewards,
            "accuracy": rewards,
            "solved_groups": (groups.max(dim=1).values > 0).double().repeat_interleave(n),
            "uniform_groups": (groups.max(dim=1).values == groups.min(dim=1).values).double().repeat_interleave(n),
        }
        statistics = RolloutStatistics(rollout, tokens={"entropy": update.entropy}, rows=per_row)
        return {"loss": update.loss, "statistics": statistics}
