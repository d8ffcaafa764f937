"""One file (or one save_to_disk folder) in, a list of records out.

The table formats are parsed by the standard library (json, csv), pyarrow and datasets;
what is written here is only the bookkeeping those parsers do not do: which line or row
each record came from, and turning an unreadable record into a counted problem rather
than an exception, so ``data.skip_bad_records`` can skip it and say so.

Record and row numbers count from 0, as ``data[i]`` does in Python; line numbers, and the
columns and bytes within a line, count from 1, as an editor shows them.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from lorakit.data.records import DataError, Record
from lorakit.paths import link_problem

SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
# Columns that make a JSON object a sample itself rather than a wrapper around a list of them.
_SAMPLE_KEYS = {"instruction", "messages", "conversations", "prompt", "text", "input", "output"}


class JSONTooDeep(json.JSONDecodeError):
    """JSON nested deeper than Python's parser can follow: it recurses once per [ or {."""


# A JSON string (skipped whole, brackets in it are text) or one bracket.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _deepest(text: str) -> tuple[int, int]:
    """(the position where the nesting of text first reaches its greatest depth, that depth)."""
    depth, deepest, at = 0, 0, 0
    for match in _STRING_OR_BRACKET.finditer(text):
        if match.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, match.start()
        elif match.group() in "]}":
            depth -= 1
    return at, deepest


def parse_json(text: str) -> Any:
    """``json.loads``; nesting too deep for it raises :class:`JSONTooDeep` (a JSONDecodeError) with its place.

    Every parse of user data goes through here: json.loads itself raises a RecursionError,
    which names no file and no line, on a file of 100,000 ``[``.
    """
    try:
        return json.loads(text)
    except RecursionError:
        at, depth = _deepest(text)
        raise JSONTooDeep(f"{depth:,} levels of [ and {{", text, at) from None


def json_problem(err: json.JSONDecodeError) -> str:
    """What is wrong with unparsable JSON, with its column; the caller adds the file and line."""
    if isinstance(err, JSONTooDeep):
        return f"JSON nested too deeply to read ({err.msg}, the deepest at column {err.colno})"
    # Some of json's messages end in "at" ("Invalid control character at"): say "at" once.
    return f"not valid JSON ({err.msg.removesuffix(' at')} at column {err.colno})"


def _not_utf8(byte: int) -> str:
    return f"not UTF-8 text (byte {byte} of the line cannot be decoded); re-save the file as UTF-8"


def _decode(path: Path, raw: bytes) -> str:
    # The BOM is taken off first so that err.start counts in the bytes searched for lines
    # (decoding "utf-8-sig" counts from after it); line 1 then starts after it, as an editor shows it.
    body = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        line = body.count(b"\n", 0, err.start) + 1
        line_start = body.rfind(b"\n", 0, err.start) + 1
        raise DataError(f"{path}, line {line}: {_not_utf8(err.start - line_start + 1)}") from None


def _jsonl(path: Path, raw: bytes) -> list[Record]:
    records = []
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        try:
            line = line_bytes.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:  # err.start counts within the line (after a BOM on line 1)
            records.append(Record({}, str(path), f"line {number}", _not_utf8(err.start + 1)))
            continue
        if not line.strip():
            continue
        try:
            value = parse_json(line)
        except json.JSONDecodeError as err:
            problem = f"{json_problem(err)}; fix or remove the line"
            records.append(Record({}, str(path), f"line {number}", problem))
            continue
        if not isinstance(value, dict):
            problem = f"each line must be a JSON object, got {type(value).__name__}"
            records.append(Record({}, str(path), f"line {number}", problem))
            continue
        records.append(Record(value, str(path), f"line {number}"))
    return records


def _samples_in(path: Path, value: dict[str, Any], key: str | None) -> Any:
    """The list of samples inside a JSON object: under ``key``, or its one list of objects."""
    if key is not None:
        if key not in value:
            raise DataError(f"{path}: no key '{key}' in the JSON object (data source key); it has {sorted(value)}")
        return value[key]
    if _SAMPLE_KEYS & set(value):
        return [value]  # the whole file is one sample
    lists = [k for k, v in value.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if len(lists) == 1:
        return value[lists[0]]
    if not lists and value and all(isinstance(v, dict) for v in value.values()):
        return value  # samples by name, {"id1": {...}, "id2": {...}}: each value is one sample
    found = f"lists under {lists}" if lists else "no list of objects"
    fix = ("Name the key of the samples with {path: ..., key: NAME} in data.train" if lists else
           "Write the samples as a JSON list (or JSON Lines), or as an object of named samples")
    raise DataError(f"{path}: expected a JSON list of samples, or an object holding one list of them; "
                    f"found {found}. {fix}")


def _json(path: Path, raw: bytes, key: str | None) -> list[Record]:
    text = _decode(path, raw)
    try:
        value = parse_json(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and text.lstrip().startswith("{"):  # JSON Lines in a .json file
            return _jsonl(path, raw)
        raise DataError(f"{path}, line {err.lineno}: {json_problem(err)}") from None
    if isinstance(value, dict):
        value = _samples_in(path, value, key)
    if isinstance(value, dict):  # named samples: each is found again by its name
        items = [(f"record {name!r}", item) for name, item in value.items()]
    elif isinstance(value, list):
        items = [(f"record {index}", item) for index, item in enumerate(value)]
    else:
        raise DataError(f"{path}: expected a JSON list of samples, got {type(value).__name__}")
    records = []
    for where, item in items:
        if isinstance(item, dict):
            records.append(Record(item, str(path), where))
        else:
            problem = f"each sample must be a JSON object, got {type(item).__name__}"
            records.append(Record({}, str(path), where, problem))
    return records


def _table(path: Path, raw: bytes, delimiter: str) -> list[Record]:
    text = _decode(path, raw)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise DataError(f"{path}: no header row; the first line must name the columns")
    records = []
    start = 2
    for row in reader:
        where = f"line {start}"
        start = reader.line_num + 1
        if None in row:
            extra = len(row[None])
            problem = f"{extra} more cell(s) than the header has columns; quote cells that contain '{delimiter}'"
            records.append(Record({}, str(path), where, problem))
            continue
        records.append(Record({k: v for k, v in row.items() if v is not None}, str(path), where))
    return records


def _parquet(path: Path) -> list[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    return [Record(row, str(path), f"row {index}") for index, row in enumerate(rows)]


def read_file(path: Path, key: str | None = None) -> list[Record]:
    """Every record of one data file, unreadable ones included with their problem."""
    if not path.is_file():
        # is_file() is False for a symlink loop and a link to nothing too; those are not "missing".
        problem = link_problem(path)
        raise DataError(f"data file {path} " + (f"cannot be read: {problem}" if problem else "does not exist"))
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{suffix}'; use one of {', '.join(SUFFIXES)}")
    if suffix == ".parquet":
        records = _parquet(path)
    else:
        try:
            raw = path.read_bytes()
        except OSError as err:  # no permission, say; is_file() above already ruled out absence
            raise DataError(f"data file {path} cannot be read: {err.strerror}") from None
        if not raw.strip():
            raise DataError(f"{path} is empty; it must hold at least one sample")
        if suffix in (".jsonl", ".ndjson"):
            records = _jsonl(path, raw)
        elif suffix == ".json":
            records = _json(path, raw, key)
        else:
            records = _table(path, raw, "\t" if suffix == ".tsv" else ",")
    if not records:
        raise DataError(f"{path} holds no samples; it must hold at least one")
    return records


def is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def read_saved_dataset(folder: Path, split: str) -> list[Record]:
    """Rows of a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"{folder}: cannot be read as a save_to_disk folder ({err})") from None
    label = str(folder)
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise DataError(f"{folder} has no split '{split}'; it has {', '.join(dataset)} (set split: in the source)")
        dataset = dataset[split]
        label = f"{folder} [{split}]"
    rows = dataset.to_list()
    if not rows:
        raise DataError(f"{label} holds no samples; it must hold at least one")
    return [Record(row, label, f"row {index}") for index, row in enumerate(rows)]
