"""Logits along a sequence, and how far two sets of them are apart, as fractions of the largest |logit|.

Shared by the merge check (merged model against base + adapter) and the GGUF checks (llama.cpp
against transformers), and by the export tests that judge llama.cpp the same way.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


def logits(model, ids: list[int]) -> np.ndarray:
    """The model's logits at every position of ``ids`` (teacher-forced), as float32, shape (len, vocab)."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
    return out.float().cpu().numpy()


class Gap(NamedTuple):
    mean: float  # mean |difference| / largest |logit| of the reference
    max: float  # largest |difference| / the same
    pick: float  # how far below the reference's best logit the token ``got`` ranks first can be (same scale)
    # a tuple, so ``mean, worst, pick = logit_gap(...)`` reads as well as ``.max``


def logit_gap(got: np.ndarray, want: np.ndarray) -> Gap:
    """Mean and max |difference| as fractions of the largest |logit|, and the worst pick: a near tie may
    flip (a small pick); a real disagreement shows as a large one."""
    vocab = min(got.shape[-1], want.shape[-1])  # a GGUF may hold fewer rows than the padded embedding
    got, want = got[..., :vocab], want[..., :vocab]
    scale = float(np.abs(want).max()) or 1.0
    diff = np.abs(got - want)
    picked = np.take_along_axis(want, got.argmax(-1)[:, None], axis=-1)[:, 0]
    return Gap(float(diff.mean() / scale), float(diff.max() / scale), float((want.max(-1) - picked).max() / scale))


def first_pick_apart(rows: np.ndarray, prompt_length: int, answer: list[int]) -> int | None:
    """Where the token ``rows`` rank first leaves ``answer`` (an index into it); None when it never does.

    ``rows``: logits along prompt + answer. Greedy decoding picks the top token at each step, so a
    model whose top token follows ``answer`` all the way gives that answer greedily: one forward pass
    tells what generating would.
    """
    picks = rows[prompt_length - 1 : prompt_length - 1 + len(answer)].argmax(-1)
    return next((k for k, (got, want) in enumerate(zip(picks, answer)) if int(got) != want), None)


def picks(rows: np.ndarray, prompt_length: int, length: int) -> list[int]:
    """The tokens ``rows`` rank first at each of an answer's ``length`` positions."""
    return [int(t) for t in rows[prompt_length - 1 : prompt_length - 1 + length].argmax(-1)]
