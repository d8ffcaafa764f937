"""Turn a record of any supported shape into one conversation: a list of role/content turns.

Everything downstream (templates, masking, generation, serving) speaks conversations
only, so a shape is supported by writing one small function here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lorakit.data.sources import DataError, Record

Message = dict[str, str]
Conversation = list[Message]

_ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
}


def _text(record: Record, key: str, required: bool = True) -> str:
    value = record.fields.get(key)
    if value is None:
        if required:
            raise DataError(f"{record.origin()}: missing required field '{key}'")
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"{record.origin()}: field '{key}' must be a string, got {type(value).__name__}; "
            "convert it to text in the file"
        )
    return value


def from_alpaca(record: Record, system_prompt: str | None) -> Conversation:
    instruction = _text(record, "instruction")
    extra = _text(record, "input", required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    system = _text(record, "system", required=False) or system_prompt
    turns: Conversation = [{"role": "system", "content": system}] if system else []
    turns += [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record, "output")}]
    return turns


def from_messages(record: Record, system_prompt: str | None) -> Conversation:
    key = "messages" if "messages" in record.fields else "conversations"
    raw = record.fields.get(key)
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{record.origin()}: '{key}' must be a non-empty list of turns")
    turns: Conversation = []
    for index, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise DataError(f"{record.origin()}: turn {index} of '{key}' must be an object")
        role_raw = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        role = _ROLE_ALIASES.get(str(role_raw).lower()) if role_raw is not None else None
        if role is None:
            raise DataError(
                f"{record.origin()}: turn {index} has unknown role {role_raw!r}; "
                f"use one of {', '.join(sorted(_ROLE_ALIASES))}"
            )
        if not isinstance(content, str):
            raise DataError(f"{record.origin()}: turn {index} content must be a string")
        turns.append({"role": role, "content": content})
    if system_prompt and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns


_SHAPES: dict[str, Callable[[Record, str | None], Conversation]] = {
    "alpaca": from_alpaca,
    "messages": from_messages,
}


def detect_shape(fields: dict[str, Any]) -> str:
    if "messages" in fields or "conversations" in fields:
        return "messages"
    if "instruction" in fields:
        return "alpaca"
    raise DataError(
        f"cannot tell the data shape from the columns {sorted(fields)}; expected alpaca "
        "(instruction/input/output) or messages/conversations. Set data.format explicitly."
    )


def to_conversation(record: Record, shape: str, system_prompt: str | None) -> Conversation:
    try:
        resolved = detect_shape(record.fields) if shape == "auto" else shape
    except DataError as err:
        raise DataError(f"{record.origin()}: {err}") from None
    return _SHAPES[resolved](record, system_prompt)
