"""A dataset named by its hub id, from the Hugging Face cache or downloaded once.

``lorakit.hub`` finds the snapshot in the cache or, when allowed (``data.hub_download`` and
``HF_HUB_OFFLINE`` unset), fetches its data files, with the same rules and messages as hub
models. datasets' own file-naming rules decide which of its files belong to which split. The
files are then read by lorakit's readers like any local file, so errors still name a file and line.
"""

from __future__ import annotations

from pathlib import Path

from lorakit.data.readers import SUFFIXES
from lorakit.data.records import DataError
from lorakit.hub import HubRepo, cached_snapshot, check_download_allowed, download_snapshot

# Only data files and the card are fetched: a repo's other files (scripts, images) are not needed.
_WANTED = [f"*{s}" for s in SUFFIXES] + ["**/*" + s for s in SUFFIXES] + ["README.md"]


def snapshot_folder(name: str, cache_dir: Path | None, download: bool) -> Path:
    """The local snapshot of hub dataset ``name``; cached first, downloaded only if allowed."""
    repo = HubRepo(name, "dataset", None, "data.hub_download")
    folder = cached_snapshot(repo, cache_dir)
    if folder is not None:
        return folder
    check_download_allowed(repo, cache_dir, download, DataError)
    return download_snapshot(repo, cache_dir, _WANTED, DataError)


def split_files(folder: Path, split: str, name: str) -> list[Path]:
    """The data files of ``split`` in a snapshot, by datasets' naming rules (train-*.parquet, data/test.jsonl ...)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(folder))
    except FileNotFoundError:
        patterns = {}
    files = DataFilesDict.from_patterns(patterns, str(folder)) if patterns else {}
    if split not in files:
        have = ", ".join(str(s) for s in files) or "none"
        raise DataError(f"hub dataset '{name}' has no '{split}' split in its files (splits found: {have})")
    chosen = [Path(f) for f in files[split] if Path(f).suffix.lower() in SUFFIXES]
    if not chosen:
        raise DataError(
            f"hub dataset '{name}', split '{split}': no file lorakit can read ({', '.join(SUFFIXES)}) in {folder}"
        )
    return sorted(chosen)
