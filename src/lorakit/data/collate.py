"""Pad a batch to its own longest sample, never to max_length.

Labels were fixed before padding, so padded positions are -100 by construction: even when
the pad token is the EOS token, a real EOS inside an answer keeps its label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lorakit.data.encode import IGNORE_INDEX, Encoded
from lorakit.data.pairs import EncodedPair


def _items(batch: Sequence[Encoded | dict]) -> list[Encoded]:
    return [b if isinstance(b, Encoded) else Encoded(b["input_ids"], b["labels"]) for b in batch]


class PadCollator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 1):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: Sequence[Encoded | dict]) -> dict[str, torch.Tensor]:
        items = _items(batch)
        longest = max(len(x.input_ids) for x in items)
        width = -(-longest // self.multiple) * self.multiple
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item.input_ids)
            ids[row, :n] = torch.tensor(item.input_ids)
            labels[row, :n] = torch.tensor(item.labels)
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class PackCollator:
    """Concatenate a batch into one row with no padding at all.

    Position ids restart at 0 for each sample; with no attention mask and no KV cache,
    transformers' attention reads sample boundaries from them and keeps each sample's
    attention inside the sample (tested in tests/model/test_loss.py). The first label of
    each sample is ignored too, so no sample is trained to predict its start from the
    previous sample's end.
    """

    def __call__(self, batch: Sequence[Encoded | dict]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for item in _items(batch):
            ids += item.input_ids
            labels += [IGNORE_INDEX] + item.labels[1:]
            positions += range(len(item.input_ids))
        return {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
        }


class PairCollator:
    """B pairs as one padded batch of 2B rows: the chosen sides, then the rejected ones."""

    def __init__(self, pad_token_id: int):
        self.pad = PadCollator(pad_token_id)

    def __call__(self, batch: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        return self.pad([p.chosen for p in batch] + [p.rejected for p in batch])
