"""Counts of what happened to every record and sample, so nothing is lost silently.

The counts balance: records read - bad records skipped - held out for eval (+ received from
train) + repeated by weight - left out by weight = samples read for encoding = kept + dropped
+ not encoded (beyond an inspection's --limit). ``balance()`` checks it; tests hold the code
to it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

MAX_EXAMPLES = 3
MAX_SKIP_REASONS = 5


@dataclass
class Finding:
    """One thing the data doctor wants the user to know before training starts."""

    level: str  # "error": training would be wrong; "warning": probably unwanted; "note": informative
    code: str
    message: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        where = f" (e.g. {'; '.join(self.examples)})" if self.examples else ""
        return f"{self.level}: {self.message}{where}"


@dataclass
class SourceSummary:
    path: str
    files: int
    records: int
    shape: str
    weight: float = 1.0


@dataclass
class DataReport:
    split: str
    sources: list[SourceSummary] = field(default_factory=list)
    records: int = 0  # records in this split's files, bad ones included
    skipped: int = 0  # bad records skipped under data.skip_bad_records
    skip_reasons: list[str] = field(default_factory=list)  # the first few, with file and line
    held_out: int = 0  # moved to the eval split by data.val_fraction
    from_train: int = 0  # received from the train split by data.val_fraction
    repeated: int = 0  # extra copies made by a weight above 1
    left_out: int = 0  # not used because of a weight below 1
    not_encoded: int = 0  # beyond an inspection's --limit
    read: int = 0  # samples given to encoding
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    tokens_cut: int = 0
    answers_lost_end: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first few origins
    findings: list[Finding] = field(default_factory=list)

    def drop(self, reason: str, origin: str) -> None:
        self.dropped[reason] += 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < MAX_EXAMPLES:
            seen.append(origin)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.skip_reasons) < MAX_SKIP_REASONS:
            self.skip_reasons.append(reason)

    def balance(self) -> bool:
        """True when every record is accounted for (see the module docstring)."""
        given = self.records - self.skipped - self.held_out + self.from_train + self.repeated - self.left_out
        return given == self.read == self.kept + sum(self.dropped.values()) + self.not_encoded

    def lines(self) -> list[str]:
        out = [
            f"{self.split}: read {self.read}, kept {self.kept}, dropped {sum(self.dropped.values())}, "
            f"truncated {self.truncated}; {self.tokens:,} tokens, {self.loss_tokens:,} carry loss"
        ]
        if self.sources:
            parts = [
                f"{s.path}{f' x{s.weight:g}' if s.weight != 1 else ''} ({s.shape}, {s.records:,} records"
                f"{f' in {s.files} files' if s.files > 1 else ''})"
                for s in self.sources
            ]
            out.append(f"  sources: {'; '.join(parts)}")
        if self.skipped:
            out.append(f"  skipped {self.skipped} bad records (data.skip_bad_records), first: "
                       + " | ".join(self.skip_reasons))
        if self.held_out:
            out.append(f"  held out {self.held_out} samples for eval (data.val_fraction)")
        if self.from_train:
            out.append(f"  {self.from_train} samples held out from the training sources (data.val_fraction)")
        if self.repeated or self.left_out:
            out.append(f"  source weights: {self.repeated} samples repeated, {self.left_out} left out")
        if self.not_encoded:
            out.append(f"  {self.not_encoded} samples beyond the inspection limit were not encoded")
        for reason, count in self.dropped.most_common():
            out.append(f"  dropped {count}: {reason} (e.g. {'; '.join(self.examples[reason])})")
        if self.truncated:
            out.append(
                f"  cut {self.truncated} samples to max_length: {self.tokens_cut:,} tokens discarded, "
                f"{self.answers_lost_end} answers lost their end token"
            )
        out += [f"  {f.line()}" for f in self.findings]
        return out

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["dropped"] = dict(self.dropped)
        return data
