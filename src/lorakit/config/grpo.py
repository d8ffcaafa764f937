"""The grpo section: how method grpo samples, scores and weighs completions (train/methods/grpo.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lorakit.config.section import Section


class GRPOConfig(Section):
    """Group Relative Policy Optimization: sample a group of completions per prompt, score each with
    the reward functions, and make the better-than-average ones of each group more likely."""

    rewards: list[str] = Field(
        default_factory=list,
        description="Reward functions: 'file.py:function' (relative to where the command runs) or "
        "'builtin:NAME' (exact, valid_json, json_fields, regex:PATTERN, length), each called as "
        "fn(prompts, completions, **columns) and returning one number (or None) per completion.",
    )
    reward_weights: list[float] | None = Field(
        None, description="One weight per reward function; the reward is their weighted sum. Default: all 1."
    )
    num_generations: int = Field(
        4, ge=2, description="Completions sampled per prompt: the group each completion is compared within."
    )
    max_completion_length: int = Field(
        64, gt=0, description="Longest completion, in tokens; a longer one is cut and counted as cut."
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; the loss scores tokens at it too.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: the likeliest tokens up to this mass.")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens; 0: no limit.")
    min_p: float = Field(0.0, ge=0, le=1, description="Drop tokens below min_p x the top probability; 0: off.")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clip the policy ratio below at 1 - epsilon.")
    epsilon_high: float | None = Field(
        None, gt=0, description="Clip the ratio above at 1 + epsilon_high (DAPO uses 0.28); default: epsilon."
    )
    beta: float = Field(
        0.0, ge=0, description="Weight of the KL penalty against the reference (the adapter off); 0: none, "
        "and no reference pass is run.",
    )
    iterations: int = Field(
        1, ge=1, description="Optimizer steps taken on each batch of completions before sampling new ones.",
    )
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "dapo", description="How token losses are averaged: dapo (default) and bnpo over the step's completion "
        "tokens; grpo per completion, then over completions; dr_grpo over completions x max_completion_length.",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide each advantage by the std of its group's rewards, of the step's, or not at all.",
    )
    mask_truncated: bool = Field(False, description="Leave completions cut at max_completion_length out of the loss.")
    log_completions: int = Field(
        2, ge=0, description="Prompts (each with its whole group) written to completions/ every logging step.",
    )

    @model_validator(mode="after")
    def _one_weight_per_reward(self) -> GRPOConfig:
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"grpo.reward_weights has {len(self.reward_weights)} weights for "
                             f"{len(self.rewards)} grpo.rewards; give one weight per reward function")
        return self
