"""The rows DPO and ORPO read: pairs of answers, read and encoded on the data path SFT samples take.

What differs from a sample is the unit: a pair is encoded as two conversations, the prompt
followed by each answer, with only the final answer trained (end-of-turn token included),
exactly as an SFT sample's last answer is. A pair is kept only when both sides fit
``max_length`` whole: a cut answer would compare a truncated answer against a whole one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig, DataSource
from lorakit.data.doctor import doubled_bos, no_end_label
from lorakit.data.encode import EMPTY_PROMPT, Encoded
from lorakit.data.encode_cache import EncodeSettings
from lorakit.data.pipeline import Rows
from lorakit.data.pairs import (
    PROMPTS_DIFFER, SAME_ANSWER, SHAPE, EncodedPair, Pair, check_pair_source, is_pair, to_pair,
)
from lorakit.data.records import Record
from lorakit.data.report import MAX_EXAMPLES, DataReport, Finding
from lorakit.data.samples import SAMPLES, Sample
from lorakit.data.shapes import Conversation
from lorakit.data.sources import as_source, read_source
from lorakit.templates import ChatTemplate

TOO_LONG = "chosen or rejected longer than max_length (both sides must fit)"
_SKIPPED_HOW = {
    PROMPTS_DIFFER: ("error", "prompts_differ", "pairs whose chosen and rejected conversations have different "
                     "prompts were dropped: a preference compares two answers to one prompt"),
    SAME_ANSWER: ("warning", "identical_answers", "pairs whose chosen and rejected answers are identical were "
                  "dropped: they teach no preference"),
    EMPTY_PROMPT: ("warning", "empty_prompt", "pairs with an empty prompt (no user text) were dropped: they "
                   "compare answers to nothing; fill in the prompt or remove them"),
}

# Each side trains its final answer only, whatever data.train_on says: the pair compares two
# answers to one shared conversation, and earlier assistant turns are that conversation.
PAIR_TRAIN_ON = "last_assistant"


def holds_pairs(sources: Sequence[DataSource | Path | str], cfg: DataConfig) -> bool:
    """Whether data is pairs of answers: data.format says so, or the first source's first readable record."""
    if cfg.format == "preference":
        return True
    if cfg.format != "auto" or not sources:
        return False
    for record in read_source(as_source(sources[0]), cfg.hub_cache, cfg.hub_download).records:
        if not record.problem:
            return is_pair(record.fields, cfg.columns)
    return False


def dropped_whole(report: DataReport, reason: str, code: str, what: str) -> list[Finding]:
    """The warning for rows dropped whole as too long (``what`` follows their count), if there were any."""
    long = report.dropped[reason]
    if not long:
        return []
    return [Finding("warning", code, f"{long} {what}; raise data.max_length to keep them", long,
                    report.examples[reason])]


class PairRows:
    """Pairs of answers, as the data path (``pipeline``) reads, encodes and checks them."""

    noun, one = "pairs", "pair"
    sides = ("chosen", "rejected")
    no_data = "set data.train to one or more files of pairs (prompt, chosen, rejected)"

    def shape(self, records: list[Record], cfg: DataConfig) -> str:
        return SHAPE

    def parse(self, record: Record, shape: str | None, cfg: DataConfig, notes: dict[str, list[str]]) -> Pair:
        check_pair_source(record.fields, cfg.columns, record.origin())
        return to_pair(record, cfg.system_prompt, cfg.columns)

    def read_findings(self, notes: dict[str, list[str]], unusable: dict[str, list[str]]) -> list[Finding]:
        findings = []
        for reason, origins in unusable.items():
            level, code, message = _SKIPPED_HOW[reason]
            findings.append(Finding(level, code, f"{len(origins)} {message}", len(origins), origins[:MAX_EXAMPLES]))
        return findings

    def settings(self, cfg: DataConfig) -> EncodeSettings:
        # data.truncation=error still stops on an over-long pair; drop and cut both drop it whole.
        return EncodeSettings(cfg.max_length, "error" if cfg.truncation == "error" else "drop", PAIR_TRAIN_ON)

    def parts(self, pair: Pair) -> list[tuple[Conversation, str | None]]:
        return [(pair.conversation(side), None) for side in self.sides]

    def reason(self, dropped: str) -> str:
        return TOO_LONG if dropped.startswith("longer than") else dropped

    def join(self, pair: Pair, encoded: list[Encoded]) -> EncodedPair:
        return EncodedPair(*encoded, pair.origin)

    def sequences(self, encoded: EncodedPair) -> list[Encoded]:
        return [encoded.chosen, encoded.rejected]

    def encode_findings(self, report: DataReport, settings: EncodeSettings) -> list[Finding]:
        return dropped_whole(report, TOO_LONG, "pair_too_long",
                             f"pairs had a side longer than data.max_length={settings.max_length} and were dropped "
                             "whole (a cut answer would be compared against a whole one)")

    def references(self, pairs: list[Pair]) -> list[Sample]:
        """Each pair's prompt with its chosen answer: what generations are scored against."""
        return [Sample(p.conversation("chosen"), p.origin, record=p.record) for p in pairs]

    def diagnose(self, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, pairs: list[Pair],
                 encoded: list[EncodedPair], report: DataReport) -> list[Finding]:
        """The SFT doctor's checks that concern how each side was rendered and masked."""
        sides = [side for pair in encoded for side in self.sequences(pair)]
        return doubled_bos(tokenizer, sides) + no_end_label(template, sides)


PAIRS = PairRows()


def rows_to_read(sources: Sequence[DataSource | Path | str], cfg: DataConfig, reads: Rows) -> Rows:
    """What data is read as: the rows a method reads, or, for one that reads samples (or none: a plain
    model), pairs when the data holds them."""
    if reads is not SAMPLES:
        return reads
    return PAIRS if holds_pairs(sources, cfg) else SAMPLES
