"""Read a file of prompts for batch generation: each record is one conversation to answer."""

from __future__ import annotations

from pathlib import Path

from lorakit.data.shapes import Conversation, from_messages
from lorakit.data.sources import DataError, read_records


def read_prompts(path: Path, system_prompt: str | None = None) -> list[Conversation]:
    """Records hold a ``prompt`` string, ``messages``/``conversations``, or alpaca ``instruction``/``input``.

    A trailing assistant turn (a reference answer) is removed: the model is asked to write it.
    """
    conversations = []
    for record in read_records(path):
        fields = record.fields
        if "messages" in fields or "conversations" in fields:
            conv = from_messages(record, system_prompt)
            if conv[-1]["role"] == "assistant":
                conv = conv[:-1]
        elif isinstance(fields.get("prompt"), str):
            conv = [{"role": "user", "content": fields["prompt"]}]
        elif isinstance(fields.get("instruction"), str):
            extra = fields.get("input") or ""
            text = f"{fields['instruction']}\n\n{extra}" if str(extra).strip() else fields["instruction"]
            conv = [{"role": "user", "content": text}]
        else:
            raise DataError(f"{record.origin()}: expected a 'prompt', 'messages' or 'instruction' field")
        if system_prompt and conv[0]["role"] != "system":
            conv.insert(0, {"role": "system", "content": system_prompt})
        if not conv or conv[-1]["role"] != "user":
            raise DataError(f"{record.origin()}: the conversation must end with a user turn to be answered")
        conversations.append(conv)
    return conversations
