"""Where samples come from: a data source in the config becomes records that know their origin.

A source is a file, a glob of files, a folder written by datasets' ``save_to_disk``, or a
hub dataset. Whatever it is, the result is a flat list of records, each naming its file
and line or row; the readers that parse each format live in ``readers``.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

from lorakit.config import DataSource
from lorakit.data.hub import snapshot_folder, split_files
from lorakit.data.readers import is_saved_dataset, read_file, read_saved_dataset
from lorakit.data.records import DataError, Record
from lorakit.hub import looks_like_hub_id
from lorakit.paths import folder_loop, link_problem

__all__ = ["DataError", "Record", "SourceRecords", "as_source", "read_records", "read_source"]

_GLOB_CHARS = "*?["


def as_source(item: DataSource | Path | str) -> DataSource:
    """A data.train or data.eval entry as a DataSource: a bare path or hub name gets the defaults (weight 1)."""
    return item if isinstance(item, DataSource) else DataSource(path=str(item))


@dataclass
class SourceRecords:
    """The records of one configured source, with the files they were read from."""

    source: DataSource
    files: list[str]
    records: list[Record]

    @property
    def label(self) -> str:
        return self.source.path


def read_records(path: Path) -> list[Record]:
    """Every record of one file; the first unreadable one stops with its file and line."""
    records = read_file(path)
    for record in records:
        if record.problem:
            raise record.error(record.problem)
    return records


def _from_files(source: DataSource, files: list[Path]) -> SourceRecords:
    records: list[Record] = []
    for file in files:
        records += read_file(file, source.key)
    return SourceRecords(source, [str(f) for f in files], records)


def _from_hub(source: DataSource, name: str, cache_dir: Path | None, download: bool) -> SourceRecords:
    folder = snapshot_folder(name, cache_dir, download)
    return _from_files(source, split_files(folder, source.split, name))


def _glob_files(pattern: str) -> list[Path]:
    """The files a glob matches, sorted; a link among them that leads nowhere is an error, not left out."""
    pattern = os.path.expanduser(pattern)
    parts = Path(pattern).parts
    fixed = Path(*takewhile(lambda part: not any(c in part for c in _GLOB_CHARS), parts))  # "." when none is
    loop = folder_loop(fixed) if "**" in parts else None
    if loop is not None:
        raise DataError(f"data source '{pattern}': '**' reaches {loop[0]}, which is {loop[1]} again (a symlink "
                        "leads back up the tree), and would read the files under it over and over; remove the "
                        "link, or name the folders without '**'")
    matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
    for match in matches:
        problem = link_problem(match)
        if problem:
            raise DataError(f"data source '{pattern}' matches {match}, which cannot be read: {problem}; "
                            "fix or remove the link")
    files = [m for m in matches if m.is_file()]  # '**' matches folders too
    if not files:
        problem = link_problem(fixed)
        raise DataError(f"data source '{pattern}' matches no file" + (f": {problem}" if problem else ""))
    return files


def read_source(source: DataSource, hub_cache: Path | None = None, hub_download: bool = False) -> SourceRecords:
    """Read one configured source, whatever kind it is."""
    text = source.path
    if text.startswith("hub:"):
        return _from_hub(source, text[4:], hub_cache, hub_download)
    if any(c in text for c in _GLOB_CHARS):
        return _from_files(source, _glob_files(text))
    path = Path(text).expanduser()
    if path.is_dir():
        if not is_saved_dataset(path):
            raise DataError(
                f"{path} is a folder but not one written by datasets' save_to_disk (no state.json or "
                f"dataset_dict.json in it); to read the files in it use a glob such as '{path}/*.jsonl'"
            )
        return SourceRecords(source, [str(path)], read_saved_dataset(path, source.split))
    if not path.exists() and not link_problem(path) and looks_like_hub_id(text, file_like=False):
        return _from_hub(source, text, hub_cache, hub_download)
    return _from_files(source, [path])
