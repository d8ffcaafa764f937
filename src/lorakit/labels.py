"""Labels: the token a position is trained to predict, or IGNORE_INDEX where it carries no loss.

Data sets them (``data/encode.py``: everything outside an answer is ignored), the collators
pad with them, and the loss, the token counts and the evaluation read them back. A causal
LM predicts the next token, so position t's logits are scored against label t + 1.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # what torch's cross-entropy skips by default


def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """Which positions of a (batch, length) labels tensor predict a trained token: (batch, length - 1) booleans."""
    return labels[:, 1:] != IGNORE_INDEX


def prompt_lengths(labels: torch.Tensor, lengths: list[int]) -> list[int]:
    """Per row, the tokens before its first label (its prompt); a row with no label is all prompt."""
    trained = loss_positions(labels)
    return [int(row.nonzero()[0]) + 1 if row.any() else length for row, length in zip(trained, lengths)]
