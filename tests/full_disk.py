"""A full disk without filling one: writes that stop partway with ENOSPC, as a real full disk makes them."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def write_half_then_fail(path: Path | str, data: bytes) -> None:
    """What a write that runs out of room leaves: the first half of the file, then ENOSPC."""
    Path(path).write_bytes(data[: len(data) // 2])
    raise no_space()


class _Filling:
    """A file that takes ``room`` more characters (or bytes) and then fails the write with ENOSPC."""

    def __init__(self, fh, room: int):
        self._fh, self._room = fh, room

    def write(self, data):
        if len(data) > self._room:
            self._fh.write(data[: self._room])
            self._fh.flush()
            self._room = 0
            raise no_space()
        self._room -= len(data)
        return self._fh.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)


def disk_fills_after(monkeypatch, room: int, under: Path) -> None:
    """Files opened for writing through ``Path.open`` under ``under`` take ``room`` more units, then ENOSPC.

    ``Path.write_text`` and ``Path.write_bytes`` open through ``Path.open``, so both fill up.
    """
    real = Path.open
    under = under.resolve()

    def open_(self, mode="r", *args, **kwargs):
        fh = real(self, mode, *args, **kwargs)
        if not any(c in mode for c in "wax") or under not in self.resolve().parents:
            return fh
        return _Filling(fh, room)

    monkeypatch.setattr(Path, "open", open_)
