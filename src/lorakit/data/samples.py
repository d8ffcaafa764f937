"""The rows SFT reads: samples, each one conversation (or, for the text shape, one text).

A record becomes a sample through its shape (``shapes``): configured, or detected from the first
readable record of its source. An unanswered trailing user turn is removed and noted: it
carries no loss but costs length. Each sample is encoded alone, with data.train_on's masking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig
from lorakit.data.doctor import diagnose
from lorakit.data.encode import Encoded
from lorakit.data.encode_cache import EncodeSettings
from lorakit.data.records import DataError, Record
from lorakit.data.report import MAX_EXAMPLES, DataReport, Finding
from lorakit.data.shapes import Conversation, canonical_shape, detect_shape, to_content
from lorakit.templates import ChatTemplate

ENDS_ON_USER = "ends_on_user"


@dataclass
class Sample:
    """One conversation (or, for the text shape, one text), kept with its origin."""

    conversation: Conversation
    origin: str
    text: str | None = None  # plain language-model text: every token carries loss
    record: dict[str, Any] = field(default_factory=dict)  # the fields as written, for a user's eval scorer

    def key(self) -> tuple:
        """Equal for samples that train the same tokens; used to find repeats and eval leaks."""
        return (self.text, *((m["role"], m["content"]) for m in self.conversation))


class SampleRows:
    """Samples, as the data path (``pipeline``) reads, encodes and checks them."""

    noun, one = "samples", "sample"
    sides = ("",)  # one encoded sequence per sample
    no_data = "set data.train to one or more files, globs or hub datasets"

    def shape(self, records: list[Record], cfg: DataConfig) -> str | None:
        """The configured shape, or the one the first readable record's columns show.

        None when every record is unreadable and skipped: there is nothing to have a shape.
        """
        if cfg.format != "auto":
            return canonical_shape(cfg.format)
        for record in records:
            try:
                if record.problem:
                    raise record.error(record.problem)
                return detect_shape(record.fields, cfg.columns)
            except DataError as err:
                if not cfg.skip_bad_records:
                    raise (err if record.problem else record.error(str(err))) from None
        return None

    def parse(self, record: Record, shape: str | None, cfg: DataConfig, notes: dict[str, list[str]]) -> Sample:
        if shape is None:
            raise record.error("no record of this source is readable")
        content = to_content(record, shape, cfg.system_prompt, cfg.columns)
        if isinstance(content, str):
            return Sample([], record.origin(), text=content, record=record.fields)
        if cfg.train_on != "everything" and content[-1]["role"] == "user":
            # The unanswered question teaches nothing (it carries no loss) but costs length.
            notes.setdefault(ENDS_ON_USER, []).append(record.origin())
            if any(m["role"] == "assistant" for m in content):
                while content[-1]["role"] == "user":
                    content = content[:-1]
        return Sample(content, record.origin(), record=record.fields)

    def read_findings(self, notes: dict[str, list[str]], unusable: dict[str, list[str]]) -> list[Finding]:
        unanswered = notes.get(ENDS_ON_USER, [])
        if not unanswered:
            return []
        return [Finding(
            "note", ENDS_ON_USER,
            f"{len(unanswered)} conversations end on a user turn with no answer; that turn was removed "
            "(a conversation with no answer at all is dropped)",
            len(unanswered), unanswered[:MAX_EXAMPLES],
        )]

    def settings(self, cfg: DataConfig) -> EncodeSettings:
        return EncodeSettings(cfg.max_length, cfg.truncation, cfg.train_on)

    def parts(self, sample: Sample) -> list[tuple[Conversation, str | None]]:
        return [(sample.conversation, sample.text)]

    def reason(self, dropped: str) -> str:
        return dropped

    def join(self, sample: Sample, encoded: list[Encoded]) -> Encoded:
        return encoded[0]

    def sequences(self, encoded: Encoded) -> list[Encoded]:
        return [encoded]

    def encode_findings(self, report: DataReport, settings: EncodeSettings) -> list[Finding]:
        return []  # the doctor (``diagnose``) reads the drops and cuts of the training split

    def references(self, samples: list[Sample]) -> list[Sample]:
        return samples

    def diagnose(self, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, samples: list[Sample],
                 encoded: list[Encoded], report: DataReport) -> list[Finding]:
        return diagnose(tokenizer, template, encoded, report, has_conversations=any(s.text is None for s in samples),
                        has_text=any(s.text is not None for s in samples))


SAMPLES = SampleRows()
