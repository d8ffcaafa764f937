"""A dataset named by its hub id, read from the local Hugging Face cache.

huggingface_hub finds (or, when allowed and the network is there, fetches) the snapshot;
datasets' own file-naming rules decide which of its files belong to which split. The files
are then read by lorakit's readers like any local file, so errors still name a file and line.
"""

from __future__ import annotations

from pathlib import Path

from lorakit.data.readers import SUFFIXES
from lorakit.data.records import DataError

# Only data files and the card are fetched: a repo's other files (scripts, images) are not needed.
_WANTED = [f"*{s}" for s in SUFFIXES] + ["**/*" + s for s in SUFFIXES] + ["README.md"]


def _cache_name(cache_dir: Path | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def snapshot_folder(name: str, cache_dir: Path | None, download: bool) -> Path:
    """The local snapshot of hub dataset ``name``; cached first, downloaded only if allowed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, repo_type="dataset", cache_dir=cache_dir, local_files_only=True))
    except LocalEntryNotFoundError:
        if not download:
            raise DataError(
                f"hub dataset '{name}' is not in the local Hugging Face cache ({_cache_name(cache_dir)}) and "
                "data.hub_download is false. Download it once where the network allows "
                f"(`hf download --repo-type dataset {name}`), or give a local file."
            ) from None
    try:
        return Path(snapshot_download(name, repo_type="dataset", cache_dir=cache_dir, allow_patterns=_WANTED))
    except Exception as err:  # noqa: BLE001 - network, auth and not-found errors all end the same way
        raise DataError(
            f"hub dataset '{name}' is not in the local Hugging Face cache ({_cache_name(cache_dir)}) and could "
            f"not be downloaded ({type(err).__name__}: {err}). Download it once where the network allows "
            f"(`hf download --repo-type dataset {name}`), or give a local file."
        ) from None


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
