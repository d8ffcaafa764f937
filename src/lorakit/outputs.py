"""The files lorakit writes: never over what the user did not name, and never half of one.

Two rules hold for every output:

- :func:`check_output_file` refuses a path before any work is done: an existing file unless the
  command was given ``--overwrite``, and never a folder, a device, a FIFO or a symbolic link (a
  link would have us write into a file the user did not name; a device or a FIFO would be
  replaced by a regular file).
- :func:`writing` (and :func:`atomic_output` / :func:`write_text` built on it) removes what a
  failed write left behind, and turns a full disk (or a read-only or forbidden place) into a
  one-line :class:`OutputWriteError` that says what was being written, where, how much room it
  needed, and that nothing partial was kept. Libraries report a full disk in their own ways (``OSError`` 28, numpy's
  ``OSError`` without an errno, safetensors' ``SafetensorError``, torch's ``RuntimeError``), so
  beside the errno and the text, a failure is taken for a full disk when the file system it
  wrote to has (almost) no room left.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import LorakitError

# The errnos of a write the file system refuses for want of room or leave, as the message says them.
_REFUSED = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is larger than the file system allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
# How libraries that do not raise an errno say the same (safetensors, numpy's memmap).
_NO_ROOM_TEXT = ("no space left on device", "os error 28", "not enough free space", "disk quota exceeded")
# A write failing with less than this left where it wrote is taken for a full disk.
_ALMOST_FULL = 1 << 20


class OutputPathError(LorakitError, FileExistsError):
    """An output path that lorakit will not write: it exists, or is no regular file."""


class OutputWriteError(LorakitError, OSError):
    """A write the file system refused (a full disk, a quota, no permission); nothing partial of it is left."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def check_output_file(path: Path, overwrite: bool, what: str = "--out") -> None:
    """Refuse to write ``path`` unless it is new, or a regular file (no link) and ``overwrite`` is given."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise OutputPathError(f"{what} {path}: a folder on that path is a file") from None
    if stat.S_ISLNK(mode):
        raise OutputPathError(
            f"{what} {path} is a symbolic link (to {os.readlink(path)}); lorakit does not write through links: "
            "give the path it points to, or another --out")
    if stat.S_ISDIR(mode):
        raise OutputPathError(f"{what} {path} is a folder; give the file to write, e.g. {path / 'model.gguf'}")
    if not stat.S_ISREG(mode):
        raise OutputPathError(f"{what} {path} is a {_kind(mode)}, not a regular file; give another --out")
    if not overwrite:
        raise OutputPathError(f"{what} {path} exists; pass --overwrite to replace it, or choose another --out")


def check_output_files(paths: dict[str, Path], overwrite: bool) -> None:
    """:func:`check_output_file` for each of several files one command writes; two of them may not coincide."""
    seen: dict[Path, str] = {}
    for what, path in paths.items():
        check_output_file(path, overwrite, what)
        key = Path(os.path.abspath(path))
        if key in seen:
            raise OutputPathError(f"{what} and {seen[key]} would both be written to {path}; give --out another name")
        seen[key] = what


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _free(path: Path) -> int | None:
    """Bytes free to this user on the file system of ``path`` (or of its nearest existing folder)."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _refusal(err: BaseException, where: Path) -> str | None:
    """Why the file system refused the write to ``where`` that raised ``err``; None when it did not (a bug)."""
    if isinstance(err, OSError) and err.errno in _REFUSED:
        return _REFUSED[err.errno]
    if any(text in str(err).lower() for text in _NO_ROOM_TEXT):
        return "the disk is full"
    free = _free(where)
    return "the disk is full" if free is not None and free < _ALMOST_FULL else None


def _remove(path: Path | Callable[[], None] | None) -> None:
    if callable(path):  # an append undone by truncating
        path()
        return
    if path is None or not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclass
class Writing:
    """One write in progress. ``undo``: what to delete (or call) if it fails; ``needed``: its size, once known."""

    what: str
    target: Path
    undo: Path | Callable[[], None] | None = None
    needed: int | None = None
    tmp: Path | None = None  # atomic_output's file to write into

    def message(self, reason: str) -> str:
        need = (f"it needs about {_size(self.needed)}" if self.needed is not None
                else "how much room it needs is not known in advance")
        free = _free(self.target)
        there = f", {_size(free)} free there" if free is not None else ""
        left = isinstance(self.undo, Path) and os.path.lexists(self.undo)
        kept = f"the partial {self.undo} could not be removed" if left else "nothing partial was kept"
        return f"could not write {self.what} to {self.target}: {reason} ({need}{there}); {kept}"


@contextmanager
def writing(what: str, target: Path, undo: Path | Callable[[], None] | None = None,
            needed: int | None = None) -> Iterator[Writing]:
    """Run the write of ``what`` to ``target``; if it fails, delete ``job.undo``, and say so if it found no room.

    Any other failure keeps its own exception (a bug keeps its traceback), with ``undo`` deleted too.
    """
    job = Writing(what, target, undo, needed)
    try:
        yield job
    except BaseException as err:
        # An inner write (a k-quant's f16 step) has said it already; anything but an Exception is no disk's fault.
        inner = isinstance(err, OutputWriteError) or not isinstance(err, Exception)
        reason = None if inner else _refusal(err, job.undo if isinstance(job.undo, Path) else target)
        _remove(job.undo)
        if reason is None:
            raise
        raise OutputWriteError(job.message(reason)) from err


@contextmanager
def atomic_output(out: Path, what: str) -> Iterator[Writing]:
    """Write into ``job.tmp``, a file in a new folder beside ``out``, renamed onto ``out`` when the block ends.

    A failed write leaves nothing; a rename replaces a link at ``out`` rather than writing through it.
    """
    with writing(what, out) as job:
        out.parent.mkdir(parents=True, exist_ok=True)
        job.undo = Path(tempfile.mkdtemp(prefix=".lorakit-", dir=out.parent))
        job.tmp = job.undo / out.name
        yield job
        job.tmp.replace(out)
        shutil.rmtree(job.undo, ignore_errors=True)  # empty, or a scratch file written beside tmp


@contextmanager
def staged_into(folder: Path, what: str) -> Iterator[Writing]:
    """Write files into ``job.tmp``, a new folder inside ``folder``, and move them into ``folder`` when the block ends.

    For a library that saves a set of files into a folder (``save_pretrained``): a failed save leaves
    ``folder`` as it was.
    """
    with writing(what, folder) as job:
        job.undo = job.tmp = Path(tempfile.mkdtemp(prefix=".lorakit-", dir=folder))
        yield job
        for path in job.tmp.iterdir():
            if (folder / path.name).is_dir():  # a rename replaces a file, but not a folder that holds files
                _remove(folder / path.name)
            path.replace(folder / path.name)
        job.tmp.rmdir()


def write_text(path: Path, text: str, what: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all."""
    data = text.encode("utf-8")
    with atomic_output(path, what) as job:
        job.needed = len(data)
        job.tmp.write_bytes(data)
    return path
