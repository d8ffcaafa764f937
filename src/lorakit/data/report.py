"""Counts of what happened to every sample, so nothing is dropped or cut silently."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class DataReport:
    split: str
    read: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    tokens_cut: int = 0
    answers_lost_end: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first few origins

    def drop(self, reason: str, origin: str) -> None:
        self.dropped[reason] += 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < 3:
            seen.append(origin)

    def lines(self) -> list[str]:
        out = [
            f"{self.split}: read {self.read}, kept {self.kept}, dropped {sum(self.dropped.values())}, "
            f"truncated {self.truncated}; {self.tokens:,} tokens, {self.loss_tokens:,} carry loss"
        ]
        for reason, count in self.dropped.most_common():
            out.append(f"  dropped {count}: {reason} (e.g. {'; '.join(self.examples[reason])})")
        if self.truncated:
            out.append(
                f"  cut {self.truncated} samples to max_length: {self.tokens_cut:,} tokens discarded, "
                f"{self.answers_lost_end} answers lost their end token"
            )
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "split": self.split,
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "truncated": self.truncated,
            "tokens_cut": self.tokens_cut,
            "answers_lost_end": self.answers_lost_end,
            "tokens": self.tokens,
            "loss_tokens": self.loss_tokens,
        }
