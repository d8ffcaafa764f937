"""Read a file of prompts for batch generation: each record is one conversation to answer."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lorakit.data.readers import json_problem, parse_json
from lorakit.data.records import DataError, Record
from lorakit.data.shapes import to_prompt
from lorakit.data.sources import read_records
from lorakit.infer.generate import Answer
from lorakit.templates import Conversation


@dataclass(frozen=True)
class Prompt:
    origin: str  # "file, line N": where to look when this prompt is reported
    conversation: Conversation


def _conversation(record: Record, system_prompt: str | None, columns: Mapping[str, str]) -> Conversation:
    # An empty cell is an absent column: CSV rows have every column, used or not.
    fields = {k: v for k, v in record.fields.items() if v != ""}
    for key in (columns.get("messages", "messages"), columns.get("conversations", "conversations")):
        if isinstance(fields.get(key), str):
            # A CSV cell can only hold text: a message list arrives as JSON inside it.
            try:
                fields[key] = parse_json(fields[key])
            except json.JSONDecodeError as err:
                problem = json_problem(err)
                raise DataError(f"{record.origin()}: column '{key}' is not a JSON list of turns: {problem}") from None
    conv = to_prompt(Record(fields, record.file, record.where), system_prompt, columns)
    if not conv or conv[-1]["role"] != "user":
        raise DataError(f"{record.origin()}: the conversation must end with a user turn to be answered")
    return conv


def one_prompt(text: str, system_prompt: str | None = None) -> Prompt:
    """``--prompt TEXT``: one user turn, after the system prompt when there is one."""
    turns: Conversation = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return Prompt("--prompt", turns + [{"role": "user", "content": text}])


def write_answers(path: Path, prompts: Sequence[Prompt], answers: Sequence[Answer]) -> None:
    """One JSON line per prompt: the conversation asked, its answer, token counts and where it came from."""
    with path.open("w", encoding="utf-8") as fh:
        for item, ans in zip(prompts, answers):
            row = {"messages": item.conversation, "answer": ans.text, "prompt_tokens": ans.prompt_tokens,
                   "new_tokens": ans.new_tokens, "finish_reason": ans.finish_reason, "source": item.origin}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_prompts(path: Path, system_prompt: str | None = None, columns: Mapping[str, str] | None = None) -> list[Prompt]:
    """Any file data.sources reads (JSONL, JSON, CSV, Parquet), each record in any shape training reads but text.

    Shapes are the data stage's (``data.shapes``), detected per record, with ``columns`` mapping
    names as ``data.columns`` does. A reference answer is left out. In CSV, ``messages`` is a JSON list.
    """
    return [Prompt(r.origin(), _conversation(r, system_prompt, columns or {})) for r in read_records(path)]
