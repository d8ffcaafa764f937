"""What ``lorakit verify`` found: one row per check, saved as ``verify.json`` in the run folder.

A check passes, warns or fails (or is skipped, saying why). Where ids differ, the row carries
the first mismatch token by token: the position, and the tokens around it on both sides, so a
user sees at once whether a BOS was doubled, a template's newline lost or a word split otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorakit.outputs import write_text
from lorakit.run import VERIFY_JSON

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
VERDICTS = (PASS, WARN, FAIL, SKIP)
_AROUND = 3  # tokens shown either side of the first difference


@dataclass
class Mismatch:
    """The first place two token sequences part: ``want`` is what training saw, ``got`` what the consumer built."""

    where: str  # which sample (file, line) and which consumer
    position: int  # index of the first differing token
    want: list[str]  # tokens from a few before the position to a few after, as "id:text"
    got: list[str]
    want_length: int
    got_length: int

    def lines(self) -> list[str]:
        return [f"{self.where}: first difference at token {self.position} "
                f"(lengths {self.want_length} and {self.got_length})",
                f"  training: {' '.join(self.want)}", f"  got:      {' '.join(self.got)}"]


@dataclass
class Check:
    name: str
    verdict: str
    summary: str  # one line: what was compared and what came out
    mismatch: Mismatch | None = None
    details: dict[str, Any] = field(default_factory=dict)  # the numbers behind the verdict, examples
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.verdict == FAIL


@dataclass
class VerifyReport:
    run: str
    prompts: str  # where the held-out conversations came from, and how many
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(c.failed for c in self.checks)

    @property
    def verdict(self) -> str:
        seen = {c.verdict for c in self.checks}
        return FAIL if FAIL in seen else WARN if WARN in seen else PASS

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VerifyReport:
        checks = []
        for c in raw.get("checks", []):
            mismatch = Mismatch(**c["mismatch"]) if c.get("mismatch") else None
            checks.append(Check(c["name"], c["verdict"], c.get("summary", ""), mismatch, c.get("details", {}),
                                c.get("seconds", 0.0)))
        return cls(raw.get("run", ""), raw.get("prompts", ""), checks)


def write_report(folder: Path, report: VerifyReport) -> Path:
    return write_text(folder / VERIFY_JSON, json.dumps(report.as_dict(), indent=2, ensure_ascii=False),
                      "the verify report")


def read_report(folder: Path) -> VerifyReport | None:
    """The run's last ``verify.json``; None when it was never verified."""
    path = folder / VERIFY_JSON
    if not path.is_file():
        return None
    return VerifyReport.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _shown(ids: Sequence[int], start: int, stop: int, text_of: Callable[[int], str]) -> list[str]:
    return [f"{i}:{text_of(i)!r}" for i in ids[start:stop]]


def first_mismatch(want: Sequence[int], got: Sequence[int], text_of: Callable[[int], str],
                   where: str) -> Mismatch | None:
    """Where ``got`` first differs from ``want`` (a missing or extra tail counts); None when equal."""
    if list(want) == list(got):
        return None
    position = next((k for k, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    start, stop = max(0, position - _AROUND), position + _AROUND + 1
    return Mismatch(where, position, _shown(want, start, stop, text_of), _shown(got, start, stop, text_of),
                    len(want), len(got))


def token_text(tokenizer) -> Callable[[int], str]:
    """How a token is shown in a mismatch: its vocabulary string (special tokens by name)."""

    def text(token: int) -> str:
        piece = tokenizer.convert_ids_to_tokens(int(token))
        return piece if piece is not None else f"<{token}>"

    return text
