"""DPO: learn which of two answers is better, against a frozen reference.

The core quantity is the sum of an answer's token log-probs under the model, log p(y | x),
computed as the SFT loss is (``model.loss.sequence_logps``): only the answer positions are
projected to the vocabulary, so no batch x length x vocab tensor is ever made. The reference
is the same weights with the adapter switched off (or, when the run starts from an SFT adapter,
with that adapter frozen: ``train/preference.py``), so no second model is held in memory.
With r = beta * (log p(y|x) - log p_ref(y|x)):

    sigmoid: loss = -log sigmoid(r_chosen - r_rejected)                    (the DPO paper's)
    ipo:     loss = (h - 1 / (2 beta))^2, h the same difference on per-token mean log-probs

IPO uses means, as TRL does, so its target margin does not grow with the answers' length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lorakit.train.methods.pairs import PairMethod
from lorakit.train.preference import reference_model


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
    beta: float, kind: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: the loss, and the implicit rewards of chosen and rejected (beta x log-ratio to the reference)."""
    chosen_rewards = beta * (chosen - ref_chosen)
    rejected_rewards = beta * (rejected - ref_rejected)
    difference = (chosen - ref_chosen) - (rejected - ref_rejected)
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * difference)
    elif kind == "ipo":
        losses = (difference - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {kind!r}: use sigmoid or ipo")
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


class DPO(PairMethod):
    name = "dpo"
    reference = True

    def compare(self, step, model, inputs):
        sums, counts = step.logps(model, inputs)
        pairs = sums.shape[0] // 2
        with torch.no_grad(), reference_model(step.unwrap(model)) as reference:
            ref_sums, _ = step.logps(reference, inputs)
        if self.settings.loss == "ipo":
            policy, ref = sums / counts.clamp(min=1), ref_sums / counts.clamp(min=1)
        else:
            policy, ref = sums, ref_sums
        losses, chosen, rejected = dpo_loss(policy[:pairs], policy[pairs:], ref[:pairs], ref[pairs:],
                                            self.settings.beta, self.settings.loss)
        return losses, chosen, rejected, {}
