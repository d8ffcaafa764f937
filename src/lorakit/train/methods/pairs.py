"""What every method that reads pairs of answers shares: batching, passes, and the logged rewards.

A batch of B pairs is 2B rows, the B chosen sides first, so both answers of a pair go through
one forward pass. A method's loss is a mean over pairs; each micro-batch divides its sum by
the pairs of the whole optimizer step, so accumulated steps equal one large batch, as SFT's
token weighting does.
"""

from __future__ import annotations

import torch

from lorakit.config import PreferenceConfig, RunConfig, SimPOConfig
from lorakit.data.collate import PairCollator
from lorakit.data.pair_dataset import PAIRS
from lorakit.train.methods.base import Batch, Method, Step, Values, refuse_rows_of_one_kind, step_share
from lorakit.train.microbatch import plan


def split_pairs(inputs: Batch, budget: int) -> list[Batch]:
    """Padding-free passes (see ``microbatch``) that keep each pair's two rows in the same pass.

    A pair is planned as one row of its longer side with half the budget, since it runs as two rows.
    """
    mask = inputs["attention_mask"]
    pairs = mask.shape[0] // 2
    lengths = mask.sum(dim=1).tolist()
    longer = [max(lengths[k], lengths[k + pairs]) for k in range(pairs)]
    groups = plan(longer, max(budget // 2, 1))
    if len(groups) == 1:
        return [inputs]
    passes = []
    for group in groups:
        rows = group + [k + pairs for k in group]
        width = max(longer[k] for k in group)
        passes.append({key: value[rows, :width] for key, value in inputs.items()})
    return passes


class PairMethod(Method):
    """A method that compares a chosen answer with a rejected one, with the preference settings; subclasses
    define ``compare``."""

    rows = PAIRS
    item = "pair"

    def __init__(self, settings: PreferenceConfig | SimPOConfig):
        self.settings = settings

    @classmethod
    def from_config(cls, cfg: RunConfig) -> PairMethod:
        return cls(cfg.preference)

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        refuse_rows_of_one_kind(cfg, cls.name, ("auto", "preference"), "pairs of answers (prompt, chosen, rejected)")

    def collator(self, pad_token_id, packing):
        return PairCollator(pad_token_id)

    def split(self, inputs, budget, packed):
        return split_pairs(inputs, budget)

    def item_count(self, batch):
        return batch["input_ids"].shape[0] // 2

    def compare(self, step: Step, model: torch.nn.Module, inputs: Batch
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Values]:
        """Per pair: the loss, the rewards of chosen and rejected, and any more values to log."""
        raise NotImplementedError

    def pair_losses(self, step: Step, model: torch.nn.Module, inputs: Batch) -> tuple[torch.Tensor, Values]:
        """Per pair: the loss, and the values logged about it."""
        losses, chosen, rejected, extra = self.compare(step, model, inputs)
        values = {"rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margins": chosen - rejected,
                  "rewards/accuracies": (chosen > rejected).float(), **extra}
        return losses, values

    def loss(self, step, model, inputs, num_items):
        losses, values = self.pair_losses(step, model, inputs)
        return step_share(losses, num_items), values
