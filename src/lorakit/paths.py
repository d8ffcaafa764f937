"""Paths the user gives, checked for the symlinks that make them unreadable.

Python reports such a link badly: ``Path.resolve`` raises a bare ``RuntimeError("Symlink loop
from ...")`` (before Python 3.13), ``exists`` and ``is_file`` answer False for a loop and for a
link to nothing alike (so the user is told a file that is there "does not exist"), and a
recursive glob follows a folder link that points back up the tree round and round, once per
turn until the system's limit on links, giving every file in it again each time. The helpers
here say instead which link is the trouble; callers raise their own error with it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from lorakit.errors import LorakitError


def _loops(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def link_problem(path: Path) -> str | None:
    """Why a symlink on the way to ``path`` cannot be followed, or None when nothing is wrong with its links.

    A loop is named at the first part of the path that loops (``data/`` when ``data`` links to
    itself and the path is ``data/train.jsonl``); a final link to nothing is named with its target.
    """
    if not _loops(path):
        if path.is_symlink() and not path.exists():
            return f"{path} is a symlink to {os.readlink(path)}, which does not exist"
        return None
    # ELOOP also comes from a chain of more links than the system follows (40 on Linux); that is
    # no less broken, and "loop" is what it almost always is.
    culprit = next(p for p in [*reversed(path.parents), path] if _loops(p))
    return f"{culprit} is a symlink loop (following its links leads back to it, never to a file or folder)"


def resolve(path: Path, error: type[LorakitError], what: str) -> Path:
    """``path.resolve()``; a symlink loop raises ``error`` naming ``what`` (a config key) and the link."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # RuntimeError before Python 3.13; OSError (ELOOP) after, where raised
        problem = link_problem(path) or f"{path} cannot be resolved to a file or folder"
        raise error(f"{what}: {problem}; point it at the file or folder itself, or fix the link") from None


def folder_loop(root: Path) -> tuple[Path, str] | None:
    """The first folder under ``root`` reached through a link that is a folder it is inside, and that folder.

    That is the walk a recursive glob (``**``) would go round and round. None when there is
    none. Hidden folders are not looked into, as ``**`` does not match them.
    """
    stack = [(root, (os.path.realpath(root),))]
    while stack:
        folder, above = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:  # unreadable: the glob cannot go in either
            continue
        for entry in entries:
            try:
                is_folder = entry.is_dir()  # follows links; False for a link to nothing
            except OSError:  # a link that loops on itself (ELOOP): the glob skips it too, it holds no files
                continue
            if entry.name.startswith(".") or not is_folder:
                continue
            real = os.path.realpath(entry.path)
            if real in above:
                return Path(entry.path), real
            stack.append((Path(entry.path), (*above, real)))
    return None
