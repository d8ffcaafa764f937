"""Split a padded batch into the forward passes that cost least: few, unpadded, not too long.

A batch of four samples of 500, 120, 100 and 90 tokens, padded to its longest, computes
2,000 token positions of which 1,190 are padding, and keeps activations for all 2,000 until
backward. Packed into passes of one row each, [500] and [120+100+90], it computes 810
positions and holds at most 500 at a time. The gradient is the same: each pass's loss is
its answer-token sum divided by the token count of the whole optimizer step, so the passes
add up to the batch's loss exactly as accumulated micro-batches do.

Where the boundaries go is a small optimisation: a pass has a fixed cost (hundreds of
kernel calls, whatever its size), a cost per position, and an attention cost that grows with
the square of its row length. ``plan`` minimises their sum over contiguous groups of the
lengths sorted longest first, by dynamic programming (a batch has at most a few hundred
rows, so the quadratic search is instant).

A packed pass is one row with position ids that restart at 0 for each sample; transformers
reads the sample boundaries from them and keeps attention within each sample (tested in
tests/model/test_loss.py). A padded pass keeps rows apart and pads each to the pass's
longest; it is for models that cannot read packed rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorakit.data.collate import PackCollator
from lorakit.data.encode import Encoded
from lorakit.labels import prompt_lengths

Batch = dict[str, torch.Tensor]
SPLITTABLE = {"input_ids", "labels", "attention_mask"}


@dataclass(frozen=True)
class PassCost:
    """The cost of one forward and backward pass, in units of one token position.

    Measured on SmolLM2-135M with LoRA r16 on all linear layers (bench/pass_cost.py, 2-core AMD
    EPYC with AVX512-BF16, one thread, bf16 weights under autocast): a pass of T tokens in one row
    took 0.2 s + 2.7 to 3.7 ms × T up to T = 512 over several runs, a fixed cost of 54 to 75
    positions; rows of 1024 and 2048 tokens (sdpa) took 2.4 s and 6.7 s more than that line, about
    T² / 1,500. In float32 the fixed cost is about 25 positions. Near the optimum the total cost is
    flat, so these need not be exact.
    """

    fixed: float = 75.0
    attention: float = 1500.0  # a row of T positions adds T² / attention

    def of(self, lengths: list[int], packed: bool) -> float:
        """Cost of one pass over samples of these lengths (longest first)."""
        if packed:
            row = sum(lengths)
            return self.fixed + row + row * row / self.attention
        width = lengths[0]
        return self.fixed + len(lengths) * width * (1 + width / self.attention)


def positions(lengths: list[int], packed: bool) -> int:
    """Token positions a pass computes: all of its tokens packed, rows × longest padded."""
    return sum(lengths) if packed else len(lengths) * lengths[0]


def plan(lengths: list[int], budget: int, packed: bool = False, cost: PassCost = PassCost()) -> list[list[int]]:
    """Rows of each pass, longest first: the cheapest split whose passes hold ≤ budget positions.

    ``packed``: each pass will be one row of its samples end to end; else rows padded to the longest.

    A row longer than the budget goes alone: samples are never cut here.
    """
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    sizes = [lengths[r] for r in order]
    # best[j]: the cheapest cost of the first j rows (in this order), and where its last pass starts.
    best: list[tuple[float, int]] = [(0.0, 0)]
    for end in range(1, len(sizes) + 1):
        options = []
        for start in range(end - 1, -1, -1):
            group = sizes[start:end]
            if end - start > 1 and positions(group, packed) > budget:
                break  # longer groups only grow (sorted longest first)
            options.append((best[start][0] + cost.of(group, packed), start))
        best.append(min(options))
    passes: list[list[int]] = []
    end = len(sizes)
    while end:
        start = best[end][1]
        passes.append(order[start:end])
        end = start
    return passes[::-1]


def _pack(inputs: Batch, rows: list[int], lengths: list[int]) -> Batch:
    items = [Encoded(inputs["input_ids"][r, : lengths[r]].tolist(), inputs["labels"][r, : lengths[r]].tolist())
             for r in rows]
    return PackCollator()(items)


def split_batch(inputs: Batch, budget: int, packed: bool = False, cost: PassCost = PassCost()) -> list[Batch]:
    """The passes of a right-padded batch: packed rows, or rows trimmed to each pass's longest.

    A batch this cannot split faithfully (packed rows with position ids, no attention mask)
    is returned whole.
    """
    mask = inputs.get("attention_mask")
    if mask is None or set(inputs) - SPLITTABLE or mask.dim() != 2:
        return [inputs]
    lengths = mask.sum(dim=1).tolist()
    passes = plan(lengths, budget, packed, cost)
    if packed:
        return [_pack(inputs, rows, lengths) for rows in passes]
    return _take(inputs, passes, lengths)


def split_rows(inputs: Batch, budget: int) -> list[Batch]:
    """Padded passes of a batch that carries more than ids and labels: whole rows under ``budget``
    positions, per-position (2-D) values trimmed to each pass's longest row, per-row (1-D) values
    taken by row, per-batch (0-D) values handed to every pass (KTO's desirable mask and z, GRPO's
    advantages)."""
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    return _take(inputs, plan(lengths, budget), lengths)


def split_runs(inputs: Batch, budget: int, run: int) -> list[Batch]:
    """Passes of whole runs of ``run`` rows that share a prompt (GRPO's completions of one prompt), in
    order, for a pass that computes each run as one row, the prompt once (model/shared_prompt.py).

    A run of rows of 100, 90, 80 tokens after a 60-token prompt is one row of 60 + 40 + 30 + 20 = 150
    positions; a pass of such runs pads them to its widest, so it computes runs × widest positions,
    and a pass takes runs in order while that stays within ``budget`` (a run wider than the budget
    goes alone). Rows are never reordered: sorting by length, as ``plan`` does, would part a
    prompt's rows. Per-row values are taken by row, as ``split_rows`` does.
    """
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    prompts = prompt_lengths(inputs["labels"], lengths)
    runs = [list(range(start, min(start + run, len(lengths)))) for start in range(0, len(lengths), run)]
    widths = [prompts[rows[0]] + sum(lengths[r] - prompts[r] for r in rows) for rows in runs]
    passes: list[list[int]] = []
    current: list[int] = []  # indices into runs
    for k in range(len(runs)):
        if current and (len(current) + 1) * max(widths[j] for j in [*current, k]) > budget > 0:
            passes.append(current)
            current = []
        current.append(k)
    passes.append(current)
    return _take(inputs, [[r for k in ks for r in runs[k]] for ks in passes], lengths)


def _take(inputs: Batch, passes: list[list[int]], lengths: list[int]) -> list[Batch]:
    if len(passes) == 1:
        return [inputs]

    def part(value: torch.Tensor, rows: list[int]) -> torch.Tensor:
        width = max(lengths[r] for r in rows)  # trimmed to the pass's longest row
        return value if value.dim() == 0 else value[rows] if value.dim() == 1 else value[rows, :width]

    return [{key: part(value, rows) for key, value in inputs.items()} for rows in passes]
