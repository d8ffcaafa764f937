"""The rows method grpo reads: prompts to be answered, each with the columns its reward functions see.

A prompt comes from any shape lorakit reads but text: ``{"prompt": ...}``, ``messages`` ending on a
user turn (or on an answer, which is then the reference), alpaca and dolly rows with or without
their output. The answer a row carries is handed to the reward functions as ``reference`` (a column
of that name wins); every column the prompt was not read from is handed to them under its own name.

A prompt is encoded as chat and generate render it, with the generation prompt and no labels
(``data.encode.encode_prompt``); data.max_length is the longest prompt, the completion adds up to
grpo.max_completion_length. Over it, a prompt is dropped (default), cut at its start, or stops the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig
from lorakit.data.doctor import doubled_bos
from lorakit.data.encode import PROMPT_ONLY, Encoded
from lorakit.data.encode_cache import EncodeSettings
from lorakit.data.records import Record
from lorakit.data.report import DataReport, Finding
from lorakit.data.samples import Sample
from lorakit.labels import IGNORE_INDEX
from lorakit.data.shapes import COLUMN_NAMES, Conversation, RecordView, detect_shape, to_content, to_prompt
from lorakit.templates import ChatTemplate

# The field holding a shape's answer: the reference, when a row has one.
_ANSWER = {"alpaca": "output", "dolly": "response", "prompt_completion": "completion"}


@dataclass
class PromptRow:
    """One prompt to be answered, and the columns its completions are scored with."""

    conversation: Conversation  # ends with the user turn the completion answers
    origin: str
    columns: dict[str, Any] = field(default_factory=dict)  # "reference" among them when the row has an answer

    def key(self) -> tuple:
        return tuple((m["role"], m["content"]) for m in self.conversation)

    @property
    def text(self) -> str:
        """What a reward function gets as the prompt: the last user turn's text."""
        return self.conversation[-1]["content"]


@dataclass
class EncodedPrompt:
    """A prompt's token ids (generation prompt included), with the row it came from."""

    input_ids: list[int]
    row: PromptRow
    cut_tokens: int = 0


def reference(record: Record, shape: str, system_prompt: str | None, columns: dict[str, str]) -> str | None:
    """The answer the record carries, if any: its output/response/completion, or a final assistant turn."""
    view = RecordView(record, columns)
    if shape != "messages" and not view.has(_ANSWER.get(shape, "")):
        return None
    full = to_content(record, shape, system_prompt, columns)
    if isinstance(full, str) or full[-1]["role"] != "assistant":
        return None
    return full[-1]["content"]


def to_prompt_row(record: Record, system_prompt: str | None, columns: dict[str, str]) -> PromptRow:
    """A record's prompt and reward columns; a record with no prompt is a DataError naming its file and line."""
    conversation = to_prompt(record, system_prompt, columns)
    if not conversation or conversation[-1]["role"] != "user":
        raise record.error("the conversation must end with a user turn (the prompt to answer)")
    shape = detect_shape(record.fields, columns)
    used = {columns.get(name, name) for name in COLUMN_NAMES}
    extra = {k: v for k, v in record.fields.items() if k not in used}
    answer = reference(record, shape, system_prompt, columns)
    if answer is not None and "reference" not in extra:
        extra["reference"] = answer
    return PromptRow(conversation, record.origin(), extra)


def as_encoded(prompt: EncodedPrompt) -> Encoded:
    """The prompt as a sequence with no label, for the data report and ``data inspect``."""
    return Encoded(prompt.input_ids, [IGNORE_INDEX] * len(prompt.input_ids), origin=prompt.row.origin)


class PromptRows:
    """Prompts, as the data path (``pipeline``) reads, encodes and checks them."""

    noun, one = "prompts", "prompt"
    sides = ("",)
    no_data = "set data.train to one or more files of prompts ({\"prompt\": ...}, messages, or alpaca rows)"

    def shape(self, records: list[Record], cfg: DataConfig) -> str:
        return "prompts"

    def parse(self, record: Record, shape: str | None, cfg: DataConfig, notes: dict[str, list[str]]) -> PromptRow:
        return to_prompt_row(record, cfg.system_prompt, cfg.columns)

    def read_findings(self, notes: dict[str, list[str]], unusable: dict[str, list[str]]) -> list[Finding]:
        return []

    def settings(self, cfg: DataConfig) -> EncodeSettings:
        return EncodeSettings(cfg.max_length, cfg.truncation, PROMPT_ONLY)

    def parts(self, row: PromptRow) -> list[tuple[Conversation, str | None]]:
        return [(row.conversation, None)]

    def reason(self, dropped: str) -> str:
        return dropped

    def join(self, row: PromptRow, encoded: list[Encoded]) -> EncodedPrompt:
        return EncodedPrompt(encoded[0].input_ids, row, encoded[0].cut_tokens)

    def sequences(self, encoded: EncodedPrompt) -> list[Encoded]:
        return [as_encoded(encoded)]

    def encode_findings(self, report: DataReport, settings: EncodeSettings) -> list[Finding]:
        return []

    def references(self, rows: list[PromptRow]) -> list[Sample]:
        """The prompts that carry a reference, answered by it: what eval scores generations against."""
        return [Sample([*row.conversation, {"role": "assistant", "content": row.columns["reference"]}], row.origin,
                       record=row.columns) for row in rows if isinstance(row.columns.get("reference"), str)]

    def diagnose(self, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, rows: list[PromptRow],
                 encoded: list[EncodedPrompt], report: DataReport) -> list[Finding]:
        return doubled_bos(tokenizer, [as_encoded(e) for e in encoded])


PROMPTS = PromptRows()
