"""Turn a record of any supported shape into one conversation (or, for ``text``, one string).

Everything downstream (templates, masking, generation, serving) speaks conversations only,
so a shape is supported by one small function here. ``data.columns`` lets a file name its
columns differently: the shape reads the canonical name, the record holds the user's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lorakit.data.records import DataError, Record
from lorakit.templates import Conversation

Content = Conversation | str  # a conversation, or plain text trained on everything

SHAPES = ("alpaca", "dolly", "prompt_completion", "text", "messages")
_ALIASES = {"sharegpt": "messages"}
# Canonical names a shape reads; data.columns may map each to a column of the user's file.
COLUMN_NAMES = (
    "instruction", "input", "output", "system", "history", "context", "response",
    "prompt", "completion", "text", "messages", "conversations", "role", "content",
)

_ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
}


class RecordView:
    """One record read through the column mapping; its errors name the record and the column.

    Every shape reader takes one (the SFT shapes here, the preference pairs in ``pairs``).
    """

    def __init__(self, record: Record, columns: Mapping[str, str]):
        self.record = record
        self.columns = columns

    def key(self, name: str) -> str:
        return self.columns.get(name, name)

    def has(self, name: str) -> bool:
        return self.record.fields.get(self.key(name)) is not None

    def raw(self, name: str) -> Any:
        return self.record.fields.get(self.key(name))

    def label(self, name: str) -> str:
        column = self.key(name)
        return f"'{column}' (data.columns.{name})" if column != name else f"'{name}'"

    def fail(self, message: str) -> DataError:
        return self.record.error(message)

    def text(self, name: str, required: bool = True) -> str:
        value = self.raw(name)
        if value is None:
            if required and self.key(name) in self.record.fields:
                # A table (Parquet, a dataset) has every column in every row; a missing value is null there.
                raise self.fail(
                    f"field {self.label(name)} is empty (null); fill it in, or drop the sample from the file"
                )
            if required:
                have = ", ".join(sorted(self.record.fields)) or "none"
                raise self.fail(
                    f"missing required field {self.label(name)} (columns here: {have}); add it, or map another "
                    f"column to it with data.columns.{name}"
                )
            return ""
        if not isinstance(value, str):
            raise self.fail(
                f"field {self.label(name)} must be a string, got {type(value).__name__}; convert it to text in the file"
            )
        return value


def system_turn(view: RecordView, system_prompt: str | None) -> Conversation:
    """The record's own system text (column ``system``), else ``data.system_prompt``, as a turn; or none."""
    system = view.text("system", required=False) or system_prompt
    return [{"role": "system", "content": system}] if system else []


def _user_text(main: str, extra: str) -> str:
    return f"{main}\n\n{extra}" if extra.strip() else main


def _history(view: RecordView) -> Conversation:
    raw = view.raw("history")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise view.fail(f"field {view.label('history')} must be a list of [question, answer] pairs")
    turns: Conversation = []
    for index, pair in enumerate(raw):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise view.fail(f"history item {index} must be a [question, answer] pair of strings, got {pair!r:.80}")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def _alpaca(view: RecordView, system_prompt: str | None) -> Conversation:
    user = _user_text(view.text("instruction"), view.text("input", required=False))
    return [
        *system_turn(view, system_prompt),
        *_history(view),
        {"role": "user", "content": user},
        {"role": "assistant", "content": view.text("output")},
    ]


def _dolly(view: RecordView, system_prompt: str | None) -> Conversation:
    user = _user_text(view.text("instruction"), view.text("context", required=False))
    return [
        *system_turn(view, system_prompt),
        {"role": "user", "content": user},
        {"role": "assistant", "content": view.text("response")},
    ]


def _content(view: RecordView, value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    # OpenAI's list-of-parts content: text parts only; anything else is not trainable text.
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    raise view.fail(f"{where} content must be a string, got {type(value).__name__}")


def read_turns(view: RecordView, name: str, raw: Any) -> Conversation:
    """A list of turns from column ``name`` (``raw``), roles and contents mapped as data.columns says.

    Takes role/content or ShareGPT's from/value keys and the role aliases (human, gpt, ...); a
    malformed turn is an error naming the record, the column and the turn's index.
    """
    if not isinstance(raw, list) or not raw:
        raise view.fail(f"{view.label(name)} must be a non-empty list of turns")
    role_keys = [view.columns["role"]] if "role" in view.columns else ["role", "from"]
    content_keys = [view.columns["content"]] if "content" in view.columns else ["content", "value"]
    turns: Conversation = []
    for index, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise view.fail(f"turn {index} of {view.label(name)} must be an object with a role and a content")
        role_raw = next((turn[k] for k in role_keys if k in turn), None)
        role = _ROLE_ALIASES.get(str(role_raw).lower()) if role_raw is not None else None
        if role is None:
            raise view.fail(
                f"turn {index} has unknown role {role_raw!r} (role keys: {', '.join(role_keys)}); "
                f"use one of {', '.join(sorted(_ROLE_ALIASES))}"
            )
        content = next((turn[k] for k in content_keys if k in turn), None)
        turns.append({"role": role, "content": _content(view, content, f"turn {index}")})
    return turns


def _messages(view: RecordView, system_prompt: str | None) -> Conversation:
    name = "messages" if view.has("messages") else "conversations"
    turns = read_turns(view, name, view.raw(name))
    if turns[0]["role"] != "system":
        # A record-level "system" (ShareGPT exports carry one) comes first, then the default.
        turns = system_turn(view, system_prompt) + turns
    return turns


def _prompt_completion(view: RecordView, system_prompt: str | None) -> Conversation:
    prompt, completion = view.raw("prompt"), view.raw("completion")
    if isinstance(prompt, list):  # conversational prompt/completion, as TRL writes it
        head = read_turns(view, "prompt", prompt)
    else:
        head = [{"role": "user", "content": view.text("prompt")}]
    if isinstance(completion, list):
        tail = read_turns(view, "completion", completion)
    else:
        tail = [{"role": "assistant", "content": view.text("completion")}]
    if head[0]["role"] != "system":
        head = system_turn(view, system_prompt) + head
    return head + tail


def _text(view: RecordView, system_prompt: str | None) -> str:
    return view.text("text")


_BUILDERS: dict[str, Callable[[RecordView, str | None], Content]] = {
    "alpaca": _alpaca,
    "dolly": _dolly,
    "prompt_completion": _prompt_completion,
    "text": _text,
    "messages": _messages,
}


def canonical_shape(shape: str) -> str:
    return _ALIASES.get(shape, shape)


def detect_shape(fields: Mapping[str, Any], columns: Mapping[str, str] | None = None) -> str:
    """The shape a record's columns say it has; the first record of a source decides for all."""
    columns = columns or {}
    has = {name for name in COLUMN_NAMES if columns.get(name, name) in fields}
    if has & {"messages", "conversations"}:
        return "messages"
    if "instruction" in has:
        return "dolly" if "output" not in has and has & {"response", "context"} else "alpaca"
    if "prompt" in has:
        return "prompt_completion"
    if "text" in has:
        return "text"
    raise DataError(
        f"cannot tell the data shape from the columns {sorted(fields)}; expected alpaca (instruction/input/"
        "output), dolly (instruction/context/response), prompt/completion, text, or messages/conversations. "
        "Set data.format, or map your columns with data.columns (e.g. {prompt: question, completion: answer})."
    )


def to_content(
    record: Record, shape: str, system_prompt: str | None, columns: Mapping[str, str] | None = None
) -> Content:
    """The conversation (or text) of one record of a known shape."""
    return _BUILDERS[canonical_shape(shape)](RecordView(record, columns or {}), system_prompt)


# The fields that hold the answer a shape trains on; a file of prompts may leave them out.
_ANSWER_FIELDS = ("output", "response", "completion")


class _PromptView(RecordView):
    """A record read for its prompt alone: its answer fields may be missing."""

    def text(self, name: str, required: bool = True) -> str:
        return super().text(name, required=required and name not in _ANSWER_FIELDS)


def to_prompt(record: Record, system_prompt: str | None, columns: Mapping[str, str] | None = None) -> Conversation:
    """The conversation a record asks to be answered, in any shape but text (detected from its own columns).

    An answer the record carries (a reference, as in training data) is left out: it is what is asked for.
    """
    try:
        shape = detect_shape(record.fields, columns)
    except DataError as err:
        raise record.error(str(err)) from None
    if shape == "text":
        raise record.error("expected a non-empty 'prompt', 'messages' or 'instruction' field; "
                           "a 'text' record has no prompt to answer")
    conversation = _BUILDERS[shape](_PromptView(record, columns or {}), system_prompt)
    assert not isinstance(conversation, str)
    return conversation[:-1] if conversation and conversation[-1]["role"] == "assistant" else conversation
