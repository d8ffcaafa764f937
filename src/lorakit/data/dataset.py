"""From configured files to encoded samples plus a report of every sample's fate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from lorakit.data.encode import Encoded, SampleDropped, encode_conversation
from lorakit.data.report import DataReport
from lorakit.data.shapes import Conversation, to_conversation
from lorakit.data.sources import DataError, read_records
from lorakit.config import DataConfig
from lorakit.data.templates import ChatTemplate


@dataclass
class Sample:
    """One conversation, kept with its origin so any later message can point at it."""

    conversation: Conversation
    origin: str
    record: dict[str, Any] = field(default_factory=dict)  # the fields as written, for a user's eval scorer


def read_conversations(paths: list[Path], shape: str, system_prompt: str | None) -> list[Sample]:
    samples = []
    for path in paths:
        for record in read_records(path):
            samples.append(Sample(to_conversation(record, shape, system_prompt), record.origin(), record.fields))
    return samples


def encode_samples(
    samples: list[Sample],
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    *,
    max_length: int,
    truncation: str,
    train_on: str,
    split: str,
) -> tuple[list[Encoded], DataReport]:
    report = DataReport(split)
    encoded: list[Encoded] = []
    for sample in samples:
        report.read += 1
        try:
            item = encode_conversation(tokenizer, template, sample.conversation, max_length, truncation, train_on)
        except SampleDropped as dropped:
            report.drop(dropped.reason, sample.origin)
            continue
        except ValueError as err:
            raise DataError(f"{sample.origin}: {err}") from None
        if item.cut_tokens:
            report.truncated += 1
            report.tokens_cut += item.cut_tokens
            report.answers_lost_end += int(item.lost_end)
        report.kept += 1
        report.tokens += len(item.input_ids)
        report.loss_tokens += sum(1 for x in item.labels if x != -100)
        encoded.append(item)
    if not encoded and samples:
        raise DataError(f"{split}: all {len(samples)} samples were dropped: " + "; ".join(report.lines()[1:]))
    return encoded, report


@dataclass
class Splits:
    train: list[Encoded]
    eval: list[Encoded]
    reports: list[DataReport]


def build_splits(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate) -> Splits:
    if not cfg.train:
        raise ValueError("no training data: set data.train to one or more JSON/JSONL files")
    splits: dict[str, list[Encoded]] = {}
    reports = []
    for split, paths in (("train", cfg.train), ("eval", cfg.eval)):
        samples = read_conversations(paths, cfg.format, cfg.system_prompt)
        splits[split], report = encode_samples(
            samples,
            tokenizer,
            template,
            max_length=cfg.max_length,
            truncation=cfg.truncation,
            train_on=cfg.train_on,
            split=split,
        )
        if samples:
            reports.append(report)
    return Splits(splits["train"], splits["eval"], reports)
