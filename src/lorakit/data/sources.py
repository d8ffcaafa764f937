"""Read records from files, remembering where each came from.

Every record carries its file and line (JSONL) or index (JSON) so that any later error
or drop can name the exact sample the user must look at.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the record and the fix."""


@dataclass(frozen=True)
class Record:
    fields: dict[str, Any]
    file: str
    where: str  # "line 12" for JSONL, "record 12" for a JSON list

    def origin(self) -> str:
        return f"{self.file}, {self.where}"


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text (byte {err.start} cannot be decoded); re-save it as UTF-8"
        ) from None


def _jsonl(path: Path, text: str) -> Iterator[Record]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(value, dict):
            raise DataError(f"{path}, line {number}: each line must be a JSON object, got {type(value).__name__}")
        yield Record(value, str(path), f"line {number}")


def _json(path: Path, text: str) -> Iterator[Record]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
    if isinstance(value, dict):
        lists = [k for k, v in value.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON list of samples, or an object holding exactly one list")
        value = value[lists[0]]
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON list of samples, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{path}, record {index}: each sample must be a JSON object, got {type(item).__name__}")
        yield Record(item, str(path), f"record {index}")


def read_records(path: Path) -> list[Record]:
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path} is empty; it must hold at least one sample")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return list(_jsonl(path, text))
    if suffix == ".json":
        # Some ".json" files are really JSON Lines; the first character tells.
        return list(_json(path, text) if text.lstrip()[0] in "[" or text.count("\n{") == 0 else _jsonl(path, text))
    raise DataError(f"{path}: unsupported file type '{suffix}'; use .json or .jsonl")
