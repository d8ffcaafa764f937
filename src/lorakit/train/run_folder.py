"""A run folder has one owner, and a new run never silently writes over an old one.

``lorakit train`` holds an exclusive ``flock`` on ``<run>/.lorakit.lock`` for as long as it
runs; the file also says who holds it (PID, host, start time), so a second run on the same
folder can name the holder. The kernel drops a flock when its process dies, so a lock left
by a killed run is free and simply taken over; a lock still held in the name of a process
that is dead on this host (a forked child kept the descriptor) is stale and replaced.

Before training, the folder is checked against what was asked: a fresh run into a folder
that holds a run (finished or not) is refused unless ``--overwrite`` says to delete it; a
``--resume`` must train with the configuration its checkpoint was written with, apart from
the keys that only say how long to go on and how often to save, evaluate and log.

Files lorakit did not write are never deleted nor written among: ``--overwrite`` deletes only
what a run writes (``lorakit.run.RUN_WRITES``) and refuses, naming them, when the folder holds
anything else; a fresh run into a folder that holds no run but is not empty is refused too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lorakit.config import resumable
from lorakit.errors import LorakitError
from lorakit.run import LOCK, RUN_FILES, RUN_WRITES, RunFolder

log = logging.getLogger(__name__)


class RunFolderError(LorakitError, ValueError):
    """The run folder is taken, or holds a run this command may not touch; the message says what to do."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "another process (it has not written its PID yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if holder.get("started") else "?"
    return f"PID {holder['pid']} on {holder.get('host', '?')} (since {since})"


class RunLock:
    """The exclusive lock on one run folder; :meth:`acquire` fails at once if another run holds it."""

    def __init__(self, folder: Path):
        self.path = RunFolder(folder).lock_file
        self._fd: int | None = None

    def acquire(self) -> None:
        for _ in range(3):  # a stale lock is removed and the next try takes a fresh file
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                holder = _holder(self.path)
                if holder.get("host") == socket.gethostname() and holder.get("pid") and not _alive(holder["pid"]):
                    log.warning("%s: its holder, %s, is dead; taking the lock over", self.path, _describe(holder))
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunFolderError(
                    f"{self.path.parent} is in use by another lorakit run: {_describe(holder)}. Wait for it to "
                    f"end or stop it, or train into another output_dir (lock file: {self.path})"
                ) from None
            # Another process may have removed the file between our open and our flock: then
            # we hold a lock on a file nobody else will see, so start over on the new one.
            if not self.path.exists() or os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                os.close(fd)
                continue
            previous = _holder(self.path)
            if previous.get("pid"):
                log.info("%s: taking over the lock of a run that ended without releasing it (%s)",
                         self.path, _describe(previous))
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.time()}).encode())
            self._fd = fd
            return
        raise RunFolderError(f"{self.path}: could not take the lock (the file keeps changing); try again")

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # unlinked while still held: no one can lock the old file after us
        os.close(self._fd)
        self._fd = None


def holds_run(folder: Path) -> bool:
    """True when ``folder`` holds what a run writes (finished or not); an empty checkpoints/ does not count."""
    for name in RUN_FILES:
        path = folder / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            return True
    return False


def _listed(paths: list[Path], most: int = 5) -> str:
    """A few of ``paths`` by name (folders with a slash), and how many more there are."""
    names = [p.name + ("/" if p.is_dir() else "") for p in paths]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _contents(folder: Path) -> list[Path]:
    """What is in a folder that holds no run; our lock and run folders left empty by a failed start do not count."""
    def left_empty(path: Path) -> bool:
        return path.name in RUN_WRITES and path.is_dir() and not path.is_symlink() and not any(path.iterdir())

    return sorted(p for p in folder.iterdir() if p.name != LOCK and not left_empty(p))


def clear(folder: Path) -> None:
    """Delete the old run in ``folder``: what a run writes (checkpoints, trackers' folders), but not our lock."""
    for path in folder.iterdir():
        if path.name == LOCK or path.name not in RUN_WRITES:  # not ours to delete (check_fresh refused those)
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _check_fresh(folder: Path, overwrite: bool) -> bool:
    """Refuse a folder a fresh run may not start in; True when it holds a run that ``overwrite`` may delete."""
    if not holds_run(folder):
        found = _contents(folder)
        if found:
            raise RunFolderError(
                f"{folder} holds no lorakit run but is not empty ({_listed(found)}); a run would write its files "
                "among these. Set output_dir to a new or empty folder, or move those files out"
            )
        return False
    if not overwrite:
        status = "a finished run" if RunFolder(folder).is_finished() else "a run that did not finish"
        raise RunFolderError(
            f"{folder} already holds {status}. To continue it, add --resume; to replace it (its adapter "
            "and checkpoints are deleted), add --overwrite; or set another output_dir"
        )
    others = RunFolder(folder).others()
    if others:
        raise RunFolderError(
            f"--overwrite: {folder} holds files no lorakit run writes ({_listed(others)}), so nothing was deleted. "
            "Move them out of the folder and run again, or set another output_dir"
        )
    return True


def check_fresh(folder: Path, overwrite: bool) -> None:
    """A fresh run may start here: the folder is empty, or holds only a run that ``--overwrite`` asked to delete."""
    if _check_fresh(folder, overwrite):
        log.warning("--overwrite: deleting the previous run in %s", folder)
        clear(folder)


def holder(folder: Path) -> dict[str, Any] | None:
    """Who holds ``folder``'s lock now (PID, host, start), or None when no run does."""
    path = RunFolder(folder).lock_file
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while a run holds it exclusively
    except BlockingIOError:
        return _holder(path) or {"pid": None}
    finally:
        os.close(fd)  # closing drops a shared lock we may have taken
    return None


def check_available(folder: Path, fresh: bool, overwrite: bool = False) -> None:
    """Before starting workers: refuse a folder another run holds, or (``fresh``) one a fresh run may not
    start in; nothing is deleted here (rank 0 does that, holding the lock)."""
    if not folder.exists():
        return
    taken = holder(folder)
    if taken is not None:
        raise RunFolderError(f"{folder} is in use by another lorakit run: {_describe(taken)}. Wait for it to end "
                             "or stop it, or train into another output_dir")
    if fresh:
        _check_fresh(folder, overwrite)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _may_change(key: str) -> bool:
    # The schema marks the keys a resumed run may change; everything else must match the checkpoint's run.
    return any(key == k or key.startswith(k + ".") for k in resumable())


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for each setting that differs and may not change on resume."""
    old, new = _flatten(saved), _flatten(current)
    keys = sorted(k for k in old.keys() | new.keys() if not _may_change(k) and old.get(k) != new.get(k))
    return [f"{k}: {old.get(k, '(not set)')!r} -> {new.get(k, '(not set)')!r}" for k in keys]


def check_resume(run: RunFolder, current: dict[str, Any]) -> None:
    """Refuse to resume with settings other than those ``run``'s checkpoint was trained with."""
    saved_config = run.config_file
    if not run.is_run():
        log.warning("--resume: no %s beside the checkpoint; its settings cannot be checked", saved_config.name)
        return
    differences = config_differences(run.read_config_as_saved(), current)
    if differences:
        listed = "\n".join(f"  {d}" for d in differences)
        raise RunFolderError(
            f"--resume: the checkpoint was trained with other settings than these ({saved_config} has the "
            f"run's own):\n{listed}\nResume with the run's settings (only the length, and the save, eval and "
            "logging cadence may change), or start a new run with --overwrite or another output_dir"
        )


@contextmanager
def owned(folder: Path, main: bool = True) -> Iterator[None]:
    """Hold ``folder`` for the run (rank 0 only: the other ranks write no run files).

    A folder this run created and left with nothing in it (the run failed before writing
    anything) is removed, so a failed start leaves no empty run folder behind.
    """
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"output_dir {folder} is a file, not a folder; set another output_dir")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder) if main else None
    if lock is not None:
        lock.acquire()
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
        if created and main:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                pass
