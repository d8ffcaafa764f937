"""Checkpoints that are either complete or ignored.

The Trainer writes a checkpoint file by file; a run killed halfway leaves a folder that
looks like a checkpoint but is not. We mark a checkpoint complete only after everything in
it is written and synced (an atomic rename of a small marker file), resume only from marked
ones, and rotate old checkpoints ourselves only after the new one is marked, so a kill at
any moment leaves at least one good checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from lorakit.errors import LorakitError

MARKER = "lorakit-complete.json"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def mark_complete(folder: Path, step: int, totals: dict | None = None) -> None:
    """Mark ``folder`` complete; ``totals`` (the run's token and loss sums so far) go into the marker."""
    _fsync_tree(folder)
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, **(totals or {})}), encoding="utf-8")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MARKER)


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def read_marker(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text(encoding="utf-8"))


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """All checkpoint folders under ``folder``, oldest first, complete or not."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return sorted(found)


def latest_complete(folder: Path) -> Path | None:
    done = [p for _, p in checkpoints(folder) if is_complete(p)]
    return done[-1] if done else None


def incomplete(folder: Path) -> list[Path]:
    return [p for _, p in checkpoints(folder) if not is_complete(p)]


def rotate(folder: Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (never ``protect``, the best one).

    Incomplete folders older than the newest complete one are leftovers of a killed write
    and are removed too; a newer incomplete one may still be being written and is left.
    """
    complete = [p for _, p in checkpoints(folder) if is_complete(p)]
    doomed = complete[:-keep] if keep > 0 else []
    newest = complete[-1] if complete else None
    if newest is not None:
        newest_step = int(_STEP.match(newest.name).group(1))
        doomed += [p for step, p in checkpoints(folder) if not is_complete(p) and step < newest_step]
    removed = []
    for path in doomed:
        if protect is not None and path.resolve() == protect.resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


class CheckpointError(LorakitError, FileNotFoundError):
    """--resume names no usable checkpoint; the message says which to give."""


def resolve_resume(resume: str | None, folder: Path) -> Path | None:
    """``--resume`` means the latest complete checkpoint; ``--resume PATH`` means that one."""
    if resume is None:
        return None
    if resume in ("", "latest"):
        found = latest_complete(folder)
        if found is None:
            raise CheckpointError(f"--resume: no complete checkpoint under {folder}; start without --resume")
        return found
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume {path}: no such checkpoint (give a checkpoint folder, or --resume "
                              f"alone for the latest complete one under {folder})")
    if not is_complete(path):
        raise CheckpointError(
            f"--resume {path}: not a complete lorakit checkpoint (no {MARKER}); "
            "it was probably cut short by a kill. Use --resume alone to take the latest complete one."
        )
    return path
