"""Split a padded batch into forward passes that carry (almost) no padding.

A batch of four samples of 500, 120, 100 and 90 tokens, padded to its longest, computes
2,000 token positions of which 1,190 are padding, and keeps activations for all 2,000 until
backward. Run as two passes, [500] and [120, 100, 90] padded to 120, it computes 860
positions and holds at most 500 at a time. The gradient is the same: each pass's loss is
its answer-token sum divided by the token count of the whole optimizer step, so the passes
add up to the batch's loss exactly as accumulated micro-batches do.

Unlike packing, no row mixes samples, so attention stays per sample on every attention
implementation and costs the sum of squared lengths, not the square of their sum.
"""

from __future__ import annotations

import torch

Batch = dict[str, torch.Tensor]
SPLITTABLE = {"input_ids", "labels", "attention_mask"}


# A row joins a pass only while the pass stays this close to padding-free. On a CPU one
# padded position costs about as much as a real token, while one more pass costs only its
# per-layer call overhead (tens of milliseconds for a whole forward and backward).
MAX_PADDING = 0.1


def plan(lengths: list[int], budget: int) -> list[list[int]]:
    """Rows of each pass, longest first: rows × the pass's longest row ≤ budget, little padding.

    A row longer than the budget goes alone: samples are never cut here.
    """
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    passes: list[list[int]] = []
    for row in order:
        if passes:
            rows = passes[-1]
            width = (len(rows) + 1) * lengths[rows[0]]
            real = sum(lengths[r] for r in rows) + lengths[row]
            if width <= budget and width - real <= MAX_PADDING * width:
                rows.append(row)
                continue
        passes.append([row])
    return passes


def split_batch(inputs: Batch, budget: int) -> list[Batch]:
    """The passes of a right-padded batch, each trimmed to its own longest sample.

    A batch this cannot split faithfully (packed rows with position ids, no attention mask)
    is returned whole.
    """
    mask = inputs.get("attention_mask")
    if mask is None or set(inputs) - SPLITTABLE or mask.dim() != 2:
        return [inputs]
    lengths = mask.sum(dim=1).tolist()
    passes = plan(lengths, budget)
    if len(passes) == 1:
        return [inputs]
    return [
        {key: value[rows, : lengths[rows[0]]] for key, value in inputs.items()}
        for rows in passes
    ]
