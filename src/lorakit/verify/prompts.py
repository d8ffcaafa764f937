"""The held-out conversations every check runs on: the user's file, else the run's eval split.

Read as training and ``lorakit eval`` read data (the run's shapes, columns and system prompt),
so a conversation here is the one training would have encoded. A run without an eval split
gets its first training conversations instead, and the report says so: they show the hand-off
as well as held-out ones do, only not how the model does on new text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lorakit.config import RunConfig
from lorakit.data.mixing import hold_out
from lorakit.data.pair_dataset import PAIRS, rows_to_read
from lorakit.data.pipeline import read_all, read_rows
from lorakit.data.report import DataReport
from lorakit.data.samples import SAMPLES, Sample
from lorakit.errors import LorakitError
from lorakit.eval import preference
from lorakit.train.methods import METHODS


class NothingToVerify(LorakitError, ValueError):
    """No conversation with an answer to verify on; the message says what to give."""


@dataclass
class HeldOut:
    samples: list[Sample]  # each ends with the assistant answer training put loss on
    source: str  # where they came from, for the report

    @property
    def prompts(self) -> list[list[dict[str, str]]]:
        """Each conversation up to the answer: what a consumer is asked."""
        return [s.conversation[:-1] for s in self.samples]


def _answered(samples: Sequence[Sample]) -> list[Sample]:
    """Conversations that end with a non-empty answer after a user turn (plain-text samples have none)."""
    return [s for s in samples if s.text is None and len(s.conversation) >= 2
            and s.conversation[-1]["role"] == "assistant" and s.conversation[-1]["content"].strip()
            and any(m["role"] == "user" for m in s.conversation[:-1])]


def _read(files: Sequence, cfg: RunConfig) -> list[Sample]:
    # As eval reads: every answer is scored, and a pairs file is read for its chosen answers.
    data = cfg.data.model_copy(update={"train_on": "all_assistant"})
    kind = rows_to_read(files, data, METHODS[cfg.method].rows)
    rows, _ = read_all(files, data, kind)
    return preference.as_samples(rows) if kind is PAIRS else rows


def _split_off(cfg: RunConfig) -> list[Sample]:
    """data.val_fraction's held-out samples, chosen exactly as the run chose them (same seed, same order)."""
    data = cfg.data
    kind = rows_to_read(data.train, data, METHODS[cfg.method].rows)
    if kind is not SAMPLES:
        return []
    rng = random.Random(data.seed)
    pools, _ = read_rows(data.train, data, DataReport("train"), kind)
    held: list[Sample] = []
    for pool in pools:
        held += hold_out(pool.rows, data.val_fraction, rng if data.shuffle else None)[1]
    return held


def held_out(cfg: RunConfig, files: Sequence[Path] | None, limit: int) -> HeldOut:
    """Up to ``limit`` answered conversations: from ``files``, else data.eval, data.val_fraction or data.train."""
    if files:
        samples, source = _read(files, cfg), ", ".join(map(str, files))
    elif cfg.data.eval:
        samples, source = _read(cfg.data.eval, cfg), "the run's data.eval"
    elif cfg.data.val_fraction:
        samples, source = _split_off(cfg), "the run's data.val_fraction split"
    else:
        samples, source = [], ""
    if not samples and not files:
        samples = _read(cfg.data.train, cfg)
        source = "training conversations (the run has no eval split; pass --data for held-out ones)"
    usable = _answered(samples)[:limit]
    if not usable:
        raise NothingToVerify(f"no conversation ending with an assistant answer in {source or 'the data'}; "
                              "pass --data FILE with answered conversations")
    return HeldOut(usable, f"{len(usable)} from {source}")
