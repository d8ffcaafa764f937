"""Where samples come from: a data source in the config becomes records that know their origin.

A source is a file, a glob of files, a folder written by datasets' ``save_to_disk``, or a
hub dataset. Whatever it is, the result is a flat list of records, each naming its file
and line or row; the readers that parse each format live in ``readers``.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from lorakit.config import DataSource
from lorakit.data.hub import snapshot_folder, split_files
from lorakit.data.readers import is_saved_dataset, read_file, read_saved_dataset
from lorakit.data.records import DataError, Record
from lorakit.hub import looks_like_hub_id

__all__ = ["DataError", "Record", "SourceRecords", "read_records", "read_source"]

_GLOB_CHARS = "*?["


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


def read_source(source: DataSource, hub_cache: Path | None = None, hub_download: bool = False) -> SourceRecords:
    """Read one configured source, whatever kind it is."""
    text = source.path
    if text.startswith("hub:"):
        return _from_hub(source, text[4:], hub_cache, hub_download)
    if any(c in text for c in _GLOB_CHARS):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
        if not matches:
            raise DataError(f"data source '{text}' matches no file")
        return _from_files(source, matches)
    path = Path(text).expanduser()
    if path.is_dir():
        if not is_saved_dataset(path):
            raise DataError(
                f"{path} is a folder but not one written by datasets' save_to_disk (no state.json or "
                f"dataset_dict.json in it); to read the files in it use a glob such as '{path}/*.jsonl'"
            )
        return SourceRecords(source, [str(path)], read_saved_dataset(path, source.split))
    if not path.exists() and looks_like_hub_id(text, file_like=False):
        return _from_hub(source, text, hub_cache, hub_download)
    return _from_files(source, [path])
