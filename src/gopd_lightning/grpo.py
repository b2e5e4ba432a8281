"""``GRPOModule``: the RL that made the paper's domain teachers (a baseline and a teacher factory).

Each prompt is sampled ``sampling.samples_per_prompt`` times; a verifier scores every response
(math-verify for math, the code sandbox for code); each response's advantage is its reward
normalised within its prompt's group (mean 0, std 1) and applies to all its tokens. Updates share
:class:`~gopd_lightning.policy.PolicyModule`'s loop: several optimiser updates per rollout batch
with PPO clipping via ``update.updates_per_rollout`` and ``update.clip_eps``. No KL penalty and no
reference model (the published teacher runs: lr 1e-6, 128 prompts x 8 rollouts).
"""

from __future__ import annotations

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from gopd_lightning.objective import aggregate, group_normalized_advantages
from gopd_lightning.policy import PolicyModule, UpdateConfig, paper_adamw
from gopd_lightning.rewards import DOMAINS
from gopd_lightning.rollout import SamplingConfig
from gopd_lightning.sharding import ShardingConfig


class GRPOModule(PolicyModule):
    """Group Relative Policy Optimisation with verifier rewards."""

    def __init__(
        self,
        student: str,
        sampling: SamplingConfig | None = None,
        eval_sampling: SamplingConfig | None = None,
        eval_samples: dict[str, int] | None = None,
        eval_pass_k: list[int] | None = None,
        update: UpdateConfig | None = None,
        max_prompt_length: int = 2048,
        logprob_chunk_size: int = 1024,
        student_dtype: str = "float32",
        optimizer: OptimizerCallable = paper_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        lora: dict | None = None,
        chat_template_kwargs: dict | None = None,
        sharding: ShardingConfig | None = None,
    ) -> None:
        """
        Args:
            student: the policy to train (path, hub id or ``toy:<name>``).
            sampling: rollout sampling; ``samples_per_prompt`` is the group size (8 in the paper).
            eval_sampling: how validation and test responses are sampled.
            eval_samples: domain -> samples per problem in evaluation.
            eval_pass_k: k values of the unbiased pass@k to report.
            update: mini-batches per rollout (PPO clip matters when > 1), micro-batches, grad clip.
            max_prompt_length: longest prompt in tokens; a longer one is an error.
            logprob_chunk_size: response positions per chunk of fp32 logits.
            student_dtype: weights of the policy.
            optimizer: builds the optimiser from the policy's parameters.
            lr_scheduler: optionally builds a learning-rate scheduler from the optimiser.
            lora: train a LoRA adapter instead of every weight (keyword arguments of ``peft.LoraConfig``).
            chat_template_kwargs: extra arguments of ``apply_chat_template`` for every prompt.
            sharding: activation checkpointing and FSDP2 settings (see ``gopd_lightning.sharding``).
        """
        super().__init__(
            student,
            sampling=sampling,
            eval_sampling=eval_sampling,
            eval_samples=eval_samples,
            eval_pass_k=eval_pass_k,
            update=update,
            max_prompt_length=max_prompt_length,
            logprob_chunk_size=logprob_chunk_size,
            student_dtype=student_dtype,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            lora=lora,
            chat_template_kwargs=chat_template_kwargs,
            sharding=sharding,
        )
        if self.sampling.samples_per_prompt < 2:
            raise ValueError("GRPO needs sampling.samples_per_prompt >= 2: advantages compare samples of one prompt")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])

    def training_step(self, batch: list[dict], batch_idx: int) -> Tensor:
        unscorable = sorted({row["id"] for row in batch if not row.get("ground_truth") or row["domain"] not in DOMAINS})
        if unscorable:
            raise ValueError(
                f"GRPO needs rows with a ground_truth in a verifiable domain {list(DOMAINS)}; "
                f"these are not: {unscorable[:5]}"
            )
        rollout = self.rollout(batch, self.sampling)
        rewards = self.accuracy(rollout)
        sequence_advantages = group_normalized_advantages(rewards, self.sampling.samples_per_prompt)

        def advantage_fn(student_logp: Tensor, rows: Tensor) -> Tensor:
            return sequence_advantages[rows.to(rewards.device)].unsqueeze(1).expand_as(student_logp)

        loss, _, entropy, _ = self.optimise(rollout, advantage_fn)
        groups = rewards.view(-1, self.sampling.samples_per_prompt)
        stats = {
            "loss": loss,
            "reward": rewards.mean(),
            "accuracy": rewards.mean(),
            "solved_groups": (groups.max(dim=1).values > 0).float().mean(),
            "uniform_groups": (groups.max(dim=1).values == groups.min(dim=1).values).float().mean(),
            "entropy": aggregate(entropy, rollout.response_mask, "token-mean"),
            "response_length": rollout.response_lengths.float().mean(),
        }
        for key, value in stats.items():
            self.log(f"train/{key}", value, prog_bar=key in ("loss", "reward"), batch_size=len(batch))
        return loss
