"""ORPO: learn the chosen answer, and prefer it to the rejected one, with no reference.

With m the per-token mean log-prob of an answer (``model.loss.sequence_logps`` over its
count) and odds = m - log(1 - exp(m)):

    loss = -m_chosen + lambda * -log sigmoid(odds_chosen - odds_rejected)

Its rewards are the mean log-probs themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lorakit.train.methods.pairs import PairMethod


def orpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, weight: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: the SFT loss on chosen plus ``weight`` x the odds-ratio term; and the log odds ratio."""

    def log_odds(mean: torch.Tensor) -> torch.Tensor:
        return mean - torch.log1p(-torch.exp(mean).clamp(max=1 - 1e-7))

    ratio = log_odds(chosen_mean) - log_odds(rejected_mean)
    return -chosen_mean - weight * F.logsigmoid(ratio), ratio.detach()


class ORPO(PairMethod):
    name = "orpo"

    def compare(self, step, model, inputs):
        sums, counts = step.logps(model, inputs)
        pairs = sums.shape[0] // 2
        means = sums / counts.clamp(min=1)
        losses, ratio = orpo_loss(means[:pairs], means[pairs:], self.settings.orpo_lambda)
        chosen, rejected = means[:pairs].detach(), means[pairs:].detach()
        return losses, chosen, rejected, {"log_odds_ratio": ratio, "nll": -chosen}
