"""GRPO's loss as pure functions of rewards and per-token log-probs (the method is in ``grpo.py``).

Each prompt's G completions are a group. A completion's advantage is its reward less its group's
mean, divided by the group's standard deviation (``scale_rewards: group``), the step's (``batch``),
or not at all (``none``, as Dr. GRPO recommends: dividing favours groups that barely differ).

Per completion token, with r = p(token) / p_old(token) the policy ratio and A the advantage:

    loss = -min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A)  +  beta r kl
    kl   = exp(ref - logp) - (ref - logp) - 1     (the k3 estimator of KL(policy || reference))

p_old is the policy that sampled the completions. With grpo.iterations 1 that is the policy being
trained, before this step's update, so r = 1 in value and only its gradient acts; with more
iterations the later steps reuse the completions and r moves away from 1, which the clip bounds.
The KL term is multiplied by r, as TRL 1.16 does by default (``use_bias_correction_kl``): its
gradient is then that of the reverse KL itself.

The token losses are averaged in one of four ways (``loss_type``); each is a sum over the step's
completions divided by a count of the whole step (``items``), so accumulation and split passes
equal one large batch:

    grpo:    each completion's token mean, averaged over completions (favours short right answers
             and long wrong ones: a token of a long completion weighs less)
    bnpo, dapo: the mean over every completion token of the step (no length bias; TRL's default)
    dr_grpo: the token sum over completions x max_completion_length (a constant: no length bias)

TRL normalises bnpo over each micro-batch's tokens and dapo over the whole step's; lorakit makes
accumulation equal one batch, so here both are the step's, and equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOKEN_LEVEL = ("bnpo", "dapo")


def nanstd(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The sample standard deviation (n - 1) of the values that are not NaN; NaN with fewer than two."""
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    count = (~torch.isnan(values)).sum(dim=dim, keepdim=True) if dim is not None else (~torch.isnan(values)).sum()
    squares = torch.nansum((values - mean) ** 2, dim=dim, keepdim=True)
    std = torch.sqrt(squares / (count - 1)).where(count > 1, torch.full_like(squares, float("nan")))
    return std.squeeze(dim) if dim is not None else std.reshape(())


@dataclass
class Advantages:
    advantages: torch.Tensor  # (N,): 0 for a completion no reward function scored
    rewards: torch.Tensor  # (N,): the weighted sum of the scores, NaN where none scored
    flat_groups: torch.Tensor  # (N / G,): groups whose rewards are all equal (they teach nothing)


def group_advantages(scores: torch.Tensor, weights: torch.Tensor, group: int, scale: str) -> Advantages:
    """Advantages of N completions in groups of ``group`` consecutive ones, from their (N, F) scores.

    A None score is NaN and left out of the weighted sum; a completion no function scored is left
    out of its group's mean and std and gets no advantage. For one group of rewards [1, 0, 0, 1]:
    the mean is 0.5, the std 0.5774, so the advantages are +-0.5 / (0.5774 + 1e-4) = +-0.8659.
    """
    unscored = torch.isnan(scores).all(dim=1)
    rewards = (scores * weights).nansum(dim=1).masked_fill(unscored, float("nan"))
    grouped = rewards.view(-1, group)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group)
    group_std = nanstd(grouped, dim=1)
    advantages = rewards - mean
    if scale != "none":
        std = group_std.repeat_interleave(group) if scale == "group" else nanstd(rewards).expand_as(rewards)
        advantages = advantages / (std + 1e-4)  # TRL's epsilon: a flat group's 0 stays 0
    flat = torch.isclose(group_std, torch.zeros_like(group_std)) | torch.isnan(group_std)
    return Advantages(torch.nan_to_num(advantages, nan=0.0), rewards, flat)


@dataclass
class TokenLosses:
    loss: torch.Tensor  # per token
    kl: torch.Tensor | None  # per token, when beta > 0
    clipped: torch.Tensor  # per token: the clip removed its gradient


def token_losses(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                 ref_logps: torch.Tensor | None, epsilon: float, epsilon_high: float, beta: float) -> TokenLosses:
    """Per completion token (all arguments flat, one value per token): the clipped surrogate loss plus
    beta times the ratio-weighted k3 KL estimate (see the module docstring)."""
    ratio = torch.exp(logps - old_logps)
    bounded = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    loss = -torch.min(ratio * advantages, bounded * advantages)
    kl = None
    if beta:
        assert ref_logps is not None
        kl = (torch.exp(ref_logps - logps) - (ref_logps - logps) - 1) * ratio
        loss = loss + beta * kl
    clipped = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon_high) & (advantages > 0))
    return TokenLosses(loss, kl, clipped)


def completion_sums(token_loss: torch.Tensor, rows: torch.Tensor, completions: int, loss_type: str) -> torch.Tensor:
    """Per completion, what its tokens add to the step's loss before the division by ``items``:
    their mean for grpo, their sum otherwise. ``rows``: each token's completion."""
    sums = token_loss.new_zeros(completions).index_add(0, rows, token_loss)
    if loss_type != "grpo":
        return sums
    counts = torch.bincount(rows, minlength=completions).to(token_loss.dtype)
    return sums / counts.clamp(min=1)


def items(loss_type: str, completions: int, tokens: int, max_completion_length: int) -> int:
    """What the step's loss is divided by: completions (grpo), completion tokens (bnpo, dapo), or
    completions x max_completion_length (dr_grpo). Completions masked out (mask_truncated) still count
    as completions, as in TRL."""
    if loss_type in TOKEN_LEVEL:
        return tokens
    return completions * (max_completion_length if loss_type == "dr_grpo" else 1)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, rows: torch.Tensor, completions: int, *, loss_type: str,
              epsilon: float, epsilon_high: float, beta: float, max_completion_length: int) -> torch.Tensor:
    """The loss of one batch taken alone: flat per-token log-probs, each token's completion in ``rows``,
    each token's advantage in ``advantages``."""
    found = token_losses(logps, old_logps, advantages, ref_logps, epsilon, epsilon_high, beta)
    total = completion_sums(found.loss, rows, completions, loss_type).sum()
    return total / max(items(loss_type, completions, logps.shape[0], max_completion_length), 1)
