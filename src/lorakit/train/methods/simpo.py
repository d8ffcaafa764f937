"""SimPO (Meng et al. 2024): preference tuning with no reference model, on the pair data DPO reads.

The implicit reward of an answer is beta times its per-token mean log-prob, so a long answer is not
favoured for being long, and the loss asks the chosen reward to beat the rejected one by a margin gamma:

    r = beta * log p(y | x) / |y|
    z = r_chosen - r_rejected - gamma
    loss = -(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)

eps (label smoothing, 0 by default) is the chance that a pair's label is wrong; TRL's CPOTrainer with
loss_type="simpo" has it too. Pure SimPO: unlike TRL's default (cpo_alpha=1, "CPO-SimPO") no SFT term
on the chosen answer is added.

gamma is the margin in reward units, as the paper's loss writes it and as TRL's ``simpo_gamma`` and
torchtune's ``SimPOLoss(gamma=)`` mean it, so a value copied from either means the same here. The
paper's repository sets ``gamma_beta_ratio`` instead: gamma = ratio x beta. The config's defaults,
beta 2.0 and gamma 0.5 (a ratio of 0.25), are torchtune's; 2.0 is the paper's beta for base models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lorakit.config import RunConfig
from lorakit.train.methods.pairs import PairMethod


def simpo_loss(
    chosen_sum: torch.Tensor, chosen_count: torch.Tensor, rejected_sum: torch.Tensor, rejected_count: torch.Tensor,
    beta: float, gamma: float, label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: the loss, and the rewards of chosen and rejected (beta x per-token mean log-prob).

    ``*_sum`` and ``*_count`` are what ``model.loss.sequence_logps`` gives per row: the sum of the
    answer's token log-probs, and its answer tokens. For example, chosen -6 over 3 tokens and rejected
    -10 over 4, with beta 2 and gamma 0.5: rewards -4 and -5, z = -4 - (-5) - 0.5 = 0.5, and the loss
    is -log sigmoid(0.5) = log(1 + e^-0.5) = 0.4741.
    """
    # A row with no answer token sums to 0: a count clamped to 1 gives it reward 0, not NaN, as ORPO's means do.
    chosen_rewards = beta * chosen_sum / chosen_count.clamp(min=1)
    rejected_rewards = beta * rejected_sum / rejected_count.clamp(min=1)
    z = chosen_rewards - rejected_rewards - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


class SimPO(PairMethod):
    name = "simpo"

    @classmethod
    def from_config(cls, cfg: RunConfig) -> SimPO:
        return cls(cfg.simpo)

    def compare(self, step, model, inputs):
        sums, counts = step.logps(model, inputs)
        pairs = sums.shape[0] // 2
        losses, chosen, rejected = simpo_loss(sums[:pairs], counts[:pairs], sums[pairs:], counts[pairs:],
                                              self.settings.beta, self.settings.gamma, self.settings.label_smoothing)
        return losses, chosen, rejected, {}
