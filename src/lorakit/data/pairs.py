"""A record holding two answers to one prompt, as one :class:`Pair`: the shared prompt, the chosen
answer and the rejected one.

Three shapes are read, under the same ``data.columns`` mapping as the SFT shapes:

- ``{"prompt": "...", "chosen": "...", "rejected": "..."}``, the prompt also as a list of turns;
- ``chosen`` and ``rejected`` as lists of turns (UltraFeedback): each the conversation so far
  plus the final assistant turn, with the prompt inside them rather than beside them;
- ``{"messages": [...history...], "chosen": ..., "rejected": ...}``: a shared history and two
  final answers (strings or assistant turns).

Everything downstream speaks conversations: a pair is two conversations that differ only in
their last turn, so both are rendered and masked by the same code that encodes SFT samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lorakit.data.encode import EMPTY_PROMPT, Encoded, empty_prompt
from lorakit.data.records import DataError, Record, Unusable
from lorakit.data.shapes import RecordView, read_turns, system_turn
from lorakit.templates import Conversation

SHAPE = "preference"  # the data shape pairs are reported as


@dataclass
class Pair:
    prompt: Conversation  # ends with the turn both answers reply to
    chosen: str
    rejected: str
    origin: str
    record: dict[str, Any] = field(default_factory=dict)  # the fields as written, for a user's eval scorer

    def conversation(self, side: str) -> Conversation:
        """The prompt followed by one answer (``side`` is 'chosen' or 'rejected')."""
        return [*self.prompt, {"role": "assistant", "content": getattr(self, side)}]

    def key(self) -> tuple:
        """Equal for pairs that train the same thing; used to find repeats and eval leaks."""
        return (*((m["role"], m["content"]) for m in self.prompt), self.chosen, self.rejected)


@dataclass
class EncodedPair:
    """Both sides of a pair, each as ids and labels with only its final answer trained."""

    chosen: Encoded
    rejected: Encoded
    origin: str = ""


class PairSkipped(Unusable):
    """The pair is readable but cannot teach a preference; ``reason`` is counted in the report."""


PROMPTS_DIFFER = "chosen and rejected have different prompts"
SAME_ANSWER = "chosen and rejected answers are identical"


def is_pair(fields: Mapping[str, Any], columns: Mapping[str, str] | None = None) -> bool:
    """Whether a record's columns hold a pair of answers."""
    columns = columns or {}
    return all(columns.get(name, name) in fields for name in ("chosen", "rejected"))


def _side(view: RecordView, name: str) -> tuple[Conversation, str]:
    """One side as (the turns before its final answer, the final answer)."""
    raw = view.raw(name)
    if raw is None or isinstance(raw, str):
        return [], view.text(name)
    turns = read_turns(view, name, [raw] if isinstance(raw, dict) else raw)
    if turns[-1]["role"] != "assistant":
        raise view.fail(f"{view.label(name)} must end with the assistant's answer, not a {turns[-1]['role']} turn")
    return turns[:-1], turns[-1]["content"]


def _head(view: RecordView) -> Conversation:
    """The prompt written beside the answers: a messages history, a prompt string or turns, or nothing."""
    for name in ("messages", "prompt"):
        raw = view.raw(name)
        if isinstance(raw, list):
            return read_turns(view, name, raw)
        if raw is not None:
            return [{"role": "user", "content": view.text(name)}]
    return []


def _first_difference(a: Conversation, b: Conversation) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def to_pair(record: Record, system_prompt: str | None, columns: Mapping[str, str] | None = None) -> Pair:
    """The pair of one record; raises DataError for a malformed record, PairSkipped for a useless one."""
    view = RecordView(record, columns or {})
    head = _head(view)
    chosen_before, chosen = _side(view, "chosen")
    rejected_before, rejected = _side(view, "rejected")
    # A side written as a whole conversation carries its prompt (UltraFeedback also keeps the
    # prompt's text beside it, in a 'prompt' column); a bare answer replies to the prompt beside it.
    prompt, other = chosen_before or head, rejected_before or head
    if prompt != other:
        turn = _first_difference(prompt, other)
        raise PairSkipped(PROMPTS_DIFFER, f"turn {turn} differs")
    if not prompt:
        raise view.fail(
            f"no prompt: give {view.label('prompt')} or {view.label('messages')} beside the answers, or "
            f"{view.label('chosen')} and {view.label('rejected')} as conversations ending with the answer"
        )
    if prompt[-1]["role"] == "assistant":
        raise view.fail("the prompt ends with an assistant turn; the answers must reply to a user turn")
    if empty_prompt(prompt):
        raise PairSkipped(EMPTY_PROMPT)
    if chosen == rejected:
        raise PairSkipped(SAME_ANSWER)
    if prompt[0]["role"] != "system":
        prompt = system_turn(view, system_prompt) + prompt
    return Pair(prompt, chosen, rejected, record.origin(), record.fields)


def check_pair_source(fields: Mapping[str, Any], columns: Mapping[str, str], where: str) -> None:
    """A preference run reads pairs only; an SFT file given to it fails with what is missing."""
    if is_pair(fields, columns):
        return
    missing = [columns.get(n, n) for n in ("chosen", "rejected") if columns.get(n, n) not in fields]
    raise DataError(
        f"{where}: a preference run (method dpo or orpo) needs pairs of answers, and this record has no "
        f"{' or '.join(repr(m) for m in missing)} (columns here: {', '.join(sorted(fields)) or 'none'}). Give "
        "prompt/chosen/rejected, or map your columns with data.columns (e.g. {chosen: better, rejected: worse})"
    )
