"""Checkpoints that are either complete or ignored.

The Trainer writes a checkpoint file by file; a run killed halfway leaves a folder that
looks like a checkpoint but is not. We mark a checkpoint complete only after everything in
it is written and synced (an atomic rename of a small marker file), resume only from marked
ones, and rotate old checkpoints ourselves only after the new one is marked, so a kill at
any moment leaves at least one good checkpoint.

A marked checkpoint can still be damaged later (a disk filling up, a copy cut short, a file
deleted by hand), so before one is resumed from its files are checked: those the marker lists
must be there at the size they were written, the weights the Trainer loads must be there, and
every safetensors file must be whole. ``--resume`` alone falls back to the newest checkpoint
that passes, saying what is wrong with each newer one; a damaged one named is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from lorakit.errors import LorakitError

log = logging.getLogger(__name__)

MARKER = "lorakit-complete.json"
_PREFIX = "checkpoint-"  # the Trainer names a step's folder so too (transformers' PREFIX_CHECKPOINT_DIR)
_STEP = re.compile(rf"^{_PREFIX}(\d+)$")
# The model weights the Trainer resumes from (one of them, or an FSDP entry, must be in a checkpoint).
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin",
            "model.safetensors.index.json", "pytorch_model.bin.index.json")
_STATE = "trainer_state.json"


class CheckpointError(LorakitError, FileNotFoundError):
    """--resume names no usable checkpoint; the message says which to give."""


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def mark_complete(folder: Path, step: int, totals: dict | None = None) -> None:
    """Mark ``folder`` complete; ``totals`` (the run's token and loss sums so far) go into the marker.

    The marker also lists every file with its size, so damage done later can be told apart.
    """
    _fsync_tree(folder)
    tmp = folder / (MARKER + ".tmp")
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name not in (MARKER, tmp.name)}
    tmp.write_text(json.dumps({"step": step, **(totals or {}), "files": files}), encoding="utf-8")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MARKER)


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def read_marker(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text(encoding="utf-8"))


def step_folder(folder: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` goes under ``folder`` (a run's checkpoints/)."""
    return folder / f"{_PREFIX}{step}"


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """All checkpoint folders under ``folder``, oldest first, complete or not."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return sorted(found)


def latest_complete(folder: Path) -> Path | None:
    done = [p for _, p in checkpoints(folder) if is_complete(p)]
    return done[-1] if done else None


def _safetensors_damage(path: Path) -> str | None:
    """What is wrong with a safetensors file: its header must parse and name exactly the bytes the file has."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if size < 8 or length > size - 8:
                return f"{path.name} is cut short ({size} bytes, not even its header)"
            header = json.loads(fh.read(length))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"{path.name} is damaged (its header does not parse)"
    if 8 + length + end != size:
        return f"{path.name} is {size} bytes where its header says {8 + length + end}"
    return None


def damage(folder: Path) -> str | None:
    """What keeps a marked checkpoint from being resumed (a file missing, cut short or damaged), or None."""
    try:
        listed = read_marker(folder).get("files")
    except (OSError, ValueError, AttributeError):
        return f"its {MARKER} does not parse"
    # A marker written before files were listed: the lighter checks below only.
    for name, size in (listed or {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, {size} when it was written"
    if not any((folder / name).is_file() for name in _WEIGHTS) and not any(folder.glob("pytorch_model_fsdp*")):
        return f"{_WEIGHTS[0]} is missing (no model weights in it)"
    try:
        json.loads((folder / _STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{_STATE} is missing"
    except (OSError, ValueError):
        return f"{_STATE} is damaged (it does not parse)"
    for path in sorted(folder.rglob("*.safetensors")):
        found = _safetensors_damage(path)
        if found:
            return found
    return None


def latest_valid(folder: Path) -> Path | None:
    """The newest complete checkpoint that is not damaged; each newer damaged one is named in a warning."""
    damaged = []
    for path in reversed([p for _, p in checkpoints(folder) if is_complete(p)]):
        found = damage(path)
        if found is None:
            for other, why in damaged:
                log.warning("--resume: skipping %s: %s; resuming from %s instead", other.name, why, path.name)
            return path
        damaged.append((path, found))
    if damaged:
        listed = "; ".join(f"{p.name}: {why}" for p, why in damaged)
        raise CheckpointError(f"--resume: every complete checkpoint under {folder} is damaged ({listed}); "
                              "start afresh with --overwrite instead of --resume, or set another output_dir")
    return None


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


def resolve_resume(resume: str | None, folder: Path) -> Path | None:
    """``--resume`` means the latest complete checkpoint; ``--resume PATH`` means that one."""
    if resume is None:
        return None
    if resume in ("", "latest"):
        found = latest_valid(folder)
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
    found = damage(path)
    if found is not None:
        raise CheckpointError(f"--resume {path}: the checkpoint is damaged: {found}. Give another checkpoint, "
                              "or --resume alone for the newest intact one")
    return path
