"""Seeded choices over samples: which are held out for eval, and how source weights mix them.

Pure functions of (samples, numbers, a seeded ``random.Random``), so the same config and
seed give the same split and the same mix on every machine.
"""

from __future__ import annotations

import math
import random
from typing import TypeVar

T = TypeVar("T")


def held_out_count(n: int, fraction: float) -> int:
    """How many of ``n`` samples a fraction holds out: at least one when there is more than one."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def hold_out(items: list[T], fraction: float, rng: random.Random | None) -> tuple[list[T], list[T]]:
    """Split into (kept, held out); a seeded random choice, or the last ones when not shuffling."""
    k = held_out_count(len(items), fraction)
    if k == 0:
        return list(items), []
    order = list(range(len(items)))
    if rng is not None:
        rng.shuffle(order)
    chosen = set(order[len(items) - k :])
    kept = [x for i, x in enumerate(items) if i not in chosen]
    held = [x for i, x in enumerate(items) if i in chosen]
    return kept, held


def apply_weight(items: list[T], weight: float, rng: random.Random) -> tuple[list[T], int, int]:
    """Use each item ``weight`` times: whole copies plus a seeded sample for the fraction.

    Returns (items, repeated, left out): 10 items at weight 1.5 give 15 (5 repeated), at
    weight 0.5 give 5 (5 left out).
    """
    n = len(items)
    target = round(n * weight)
    whole = math.floor(weight)
    out = [x for _ in range(whole) for x in items][:target]
    rest = target - len(out)
    if rest > 0:
        out += rng.sample(items, rest)
    return out, max(target - n, 0), max(n - target, 0)
