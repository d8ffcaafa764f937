"""The unit every reader produces: one record's fields plus where it came from.

A record keeps its file and line (or row) so that any later error, skip or drop can name
the exact sample the user must look at. A record that could not be parsed still exists,
carrying its problem, so that ``data.skip_bad_records`` can count it instead of losing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorakit.errors import LorakitError


class DataError(LorakitError, ValueError):
    """Input data that cannot be used; the message names the file, the record and the fix."""


class Unusable(Exception):
    """The record reads, but its row cannot teach anything; ``reason`` is counted as a drop in the report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Record:
    fields: dict[str, Any]
    file: str
    where: str  # "line 12" (JSONL, JSON parse errors), "record 12" (JSON list), "row 12" (tables)
    problem: str | None = field(default=None, compare=False)  # why this record cannot be read

    def origin(self) -> str:
        return f"{self.file}, {self.where}"

    def error(self, message: str) -> DataError:
        return DataError(f"{self.origin()}: {message}")
