"""The rows KTO reads: single answers, each labelled desirable or undesirable.

A record is either a labelled answer, ``{"prompt": ..., "completion": ..., "label": true|false}``
with prompt and completion as text or lists of turns (TRL's unpaired preference format), or a
pair of answers (the rows DPO reads), split into its chosen answer (desirable) and its rejected
one (undesirable). The data path's row is the record's answers, one or two, so a pair's two
answers are held out, counted and dropped together: the report counts records as for pairs.

Each answer is encoded as a pair's side is: the prompt then the answer, only the answer (and its
end of turn) trained, and kept only when it fits ``max_length`` whole, since a cut answer would
be judged as if it were the whole one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig
from lorakit.data.doctor import doubled_bos, no_end_label
from lorakit.data.encode import Encoded
from lorakit.data.encode_cache import EncodeSettings
from lorakit.data.pair_dataset import PAIRS, dropped_whole
from lorakit.data.pairs import is_pair, to_pair
from lorakit.data.records import Record
from lorakit.data.report import DataReport, Finding
from lorakit.data.samples import Sample
from lorakit.data.shapes import RecordView, to_content
from lorakit.templates import ChatTemplate, Conversation

LABELLED = "labelled answers"  # the shape of prompt/completion/label records, in the report
TOO_LONG = "an answer longer than max_length (each must fit whole)"


@dataclass
class Answer:
    """One answer to a prompt, and whether it is the kind of answer to learn (desirable) or to unlearn."""

    prompt: Conversation  # ends with the turn the answer replies to
    completion: str
    desirable: bool
    origin: str
    record: dict[str, Any] = field(default_factory=dict, compare=False)  # the fields as written, for eval's scorer

    def conversation(self) -> Conversation:
        return [*self.prompt, {"role": "assistant", "content": self.completion}]

    def key(self) -> tuple:
        """Equal for answers that train the same thing."""
        return (*((m["role"], m["content"]) for m in self.prompt), self.completion, self.desirable)


def to_answers(record: Record, system_prompt: str | None, columns: Mapping[str, str] | None = None
               ) -> list[Answer]:
    """The labelled answers of one record: one for a labelled row, two for a pair.

    A pair (``chosen`` and ``rejected`` columns) reads as ``data.pairs.to_pair`` reads it, and may
    raise its ``PairSkipped``. Anything else is a prompt/completion row (``data.shapes``) with a
    boolean ``label``; a malformed one raises DataError naming the file and line.
    """
    columns = columns or {}
    if is_pair(record.fields, columns):
        pair = to_pair(record, system_prompt, columns)
        return [Answer(pair.prompt, pair.chosen, True, pair.origin, pair.record),
                Answer(pair.prompt, pair.rejected, False, pair.origin, pair.record)]
    view = RecordView(record, columns)
    label = view.raw("label")
    if not isinstance(label, bool):
        got = "nothing" if label is None else f"{label!r:.40}"
        raise view.fail(
            f"field {view.label('label')} must be true (a desirable answer) or false (an undesirable one), got "
            f"{got}; or give pairs of answers as prompt/chosen/rejected"
        )
    conversation = to_content(record, "prompt_completion", system_prompt, columns)
    *prompt, answer = conversation
    if answer["role"] != "assistant":
        raise view.fail(f"{view.label('completion')} must end with the assistant's answer, not a {answer['role']} turn")
    if prompt[-1]["role"] == "assistant":
        raise view.fail("the prompt ends with an assistant turn; the completion must reply to a user turn")
    return [Answer(prompt, answer["content"], label, record.origin(), record.fields)]


@dataclass
class Answers:
    """The answers of one record (one, or a pair's two), the data path's row."""

    answers: list[Answer]
    origin: str

    def key(self) -> tuple:
        """Equal for records that train the same thing; used to find repeats and eval leaks."""
        return tuple(answer.key() for answer in self.answers)


@dataclass
class EncodedAnswer:
    encoded: Encoded  # the prompt and the answer, only the answer (and its end of turn) trained
    desirable: bool


class AnswerRows:
    """Labelled answers, as the data path (``pipeline``) reads, encodes and checks them."""

    noun, one = "records", "record"
    sides = ("answer",)
    no_data = "set data.train to one or more files of labelled answers (prompt, completion, label) or of pairs"

    def shape(self, records: list[Record], cfg: DataConfig) -> str:
        first = next((r for r in records if not r.problem), None)
        return PAIRS.shape(records, cfg) if first is not None and is_pair(first.fields, cfg.columns) else LABELLED

    def parse(self, record: Record, shape: str | None, cfg: DataConfig, notes: dict[str, list[str]]) -> Answers:
        return Answers(to_answers(record, cfg.system_prompt, cfg.columns), record.origin())

    def read_findings(self, notes: dict[str, list[str]], unusable: dict[str, list[str]]) -> list[Finding]:
        return PAIRS.read_findings(notes, unusable)  # what makes a row unusable is a pair's reason

    def settings(self, cfg: DataConfig) -> EncodeSettings:
        return PAIRS.settings(cfg)

    def parts(self, row: Answers) -> list[tuple[Conversation, str | None]]:
        return [(answer.conversation(), None) for answer in row.answers]

    def reason(self, dropped: str) -> str:
        return TOO_LONG if dropped.startswith("longer than") else dropped

    def join(self, row: Answers, encoded: list[Encoded]) -> list[EncodedAnswer]:
        return [EncodedAnswer(item, answer.desirable) for answer, item in zip(row.answers, encoded)]

    def sequences(self, encoded: list[EncodedAnswer]) -> list[Encoded]:
        return [answer.encoded for answer in encoded]

    def encode_findings(self, report: DataReport, settings: EncodeSettings) -> list[Finding]:
        return dropped_whole(report, TOO_LONG, "answer_too_long",
                             f"records had an answer longer than data.max_length={settings.max_length} and were "
                             "dropped whole (a cut answer would be judged as the whole one)")

    def references(self, rows: list[Answers]) -> list[Sample]:
        """The desirable answers: what generations are scored against (an undesirable one is no target)."""
        return [Sample(a.conversation(), a.origin, record=a.record) for row in rows for a in row.answers if a.desirable]

    def diagnose(self, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, rows: list[Answers],
                 encoded: list[list[EncodedAnswer]], report: DataReport) -> list[Finding]:
        """The SFT doctor's checks that concern how each answer was rendered and masked."""
        answers = [item for row in encoded for item in self.sequences(row)]
        return doubled_bos(tokenizer, answers) + no_end_label(template, answers)


ANSWERS = AnswerRows()
