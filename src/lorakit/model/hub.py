"""A base model named by its hub id, resolved once to a local snapshot folder.

Only what loading needs is fetched: the weights in one format (safetensors when the repo has
them, else PyTorch .bin), the config, the generation config and the tokenizer files with any
chat templates. ``config.json`` comes first, so a repo that would run code of its own is
refused before its weights are downloaded. transformers then loads the folder and never
touches the network itself.
"""

from __future__ import annotations

import glob
import json
import logging
from fnmatch import fnmatch
from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.hub import HubRepo, cached_snapshot, check_download_allowed, download_snapshot, repo_files
from lorakit.model.gguf_cache import ModelNotFoundError

log = logging.getLogger(__name__)

# Top-level files besides the weights: config, generation config, tokenizer (tokenizer.json,
# tokenizer.model, vocab/merges), chat_template.jinja, special_tokens_map.json, weight index.
_SIDE_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
# (weights, the index of the other format), in order of preference
_WEIGHTS = (
    ("model*.safetensors", "pytorch_model.bin.index.json"),
    ("pytorch_model*.bin", "model.safetensors.index.json"),
)


class RemoteCodeError(LorakitError, ValueError):
    """The model needs code of its own to load, and the config does not allow running it."""


def wanted_files(files: list[str], remote_code: bool = False, weights: bool = True) -> list[str]:
    """The repo files to fetch, as exact patterns for ``snapshot_download``'s ``allow_patterns``.

    ``weights=False``: everything but the weights (config, tokenizer, templates), which is all
    that the tokenizer and the data checks need.
    """
    top = [f for f in files if "/" not in f]
    chosen: list[str] = []
    skip_index = None
    for pattern, other_index in _WEIGHTS:
        chosen = [f for f in top if fnmatch(f, pattern)]
        if chosen:
            skip_index = other_index  # the index of the format not fetched would name missing files
            break
    if not weights:
        chosen = []
    chosen += [f for f in top if f.endswith(_SIDE_SUFFIXES) and f != skip_index]
    chosen += [f for f in files if f.startswith("additional_chat_templates/")]
    if remote_code:
        chosen += [f for f in top if f.endswith(".py")]
    return [glob.escape(f) for f in sorted(set(chosen))]


def has_weights(folder: Path) -> bool:
    return any(folder.glob("model*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def needs_remote_code(folder: Path) -> bool:
    """True when transformers has no built-in class for the folder's ``model_type``.

    A known model_type loads with transformers' own code even when config.json also carries an
    ``auto_map`` (Phi-3's does): with trust_remote_code off, transformers ignores the repo's copy.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = _read_config(folder)
    return config.get("model_type") not in CONFIG_MAPPING


def check_remote_code(folder: Path, label: str, where: str, allowed: bool) -> None:
    """Refuse a model that needs its own code unless ``model.trust_remote_code`` is set."""
    import transformers

    if not needs_remote_code(folder):
        return
    config = _read_config(folder)
    model_type = config.get("model_type")
    code = sorted(set((config.get("auto_map") or {}).values()) - {None}, key=str)
    if not code:
        raise RemoteCodeError(
            f"{label}: transformers {transformers.__version__} does not know model_type {model_type!r} and "
            "config.json names no code for it (no auto_map); a newer transformers may know it "
            "(pip install -U transformers)"
        )
    if not allowed:
        raise RemoteCodeError(
            f"{label} needs code of its own to load (model_type {model_type!r}, which transformers "
            f"{transformers.__version__} does not know; config.json's auto_map names {', '.join(map(str, code))}). "
            f"lorakit does not run a model's code unless told to: read it at {where}, and if you trust it, "
            "set model.trust_remote_code: true"
        )


def _read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(f"cannot read {folder / 'config.json'}: {err}") from None
    return config if isinstance(config, dict) else {}


def model_snapshot(
    name: str, revision: str | None, download: bool, trust_remote_code: bool, weights: bool = True
) -> Path:
    """The local snapshot folder of hub model ``name``: from the cache, or downloaded once.

    ``weights=False`` fetches all but the weights: training reads the tokenizer and checks the
    data first, so a bad data file fails before gigabytes of weights are downloaded.
    """
    from huggingface_hub import constants

    repo = HubRepo(name, "model", revision, "model.download")
    web = f"{constants.ENDPOINT}/{name}"
    folder = cached_snapshot(repo, None, lambda files: wanted_files(files, trust_remote_code, weights))
    if folder is not None and (folder / "config.json").is_file() and (has_weights(folder) or not weights):
        check_remote_code(folder, repo.label(), web, trust_remote_code)
        log.info("model %s: cached snapshot %s", name, folder)
        return folder
    check_download_allowed(repo, None, download, ModelNotFoundError)
    first = download_snapshot(repo, None, ["config.json"], ModelNotFoundError)
    if not (first / "config.json").is_file():
        raise ModelNotFoundError(
            f"{repo.label()} has no config.json, so it is not a transformers model; for a GGUF repo, "
            "download its .gguf file and give that path as model.name"
        )
    check_remote_code(first, repo.label(), web, trust_remote_code)
    commit = first.name  # the snapshot folder is named after the commit its revision resolved to
    try:
        files = repo_files(repo, None, commit=commit) or []
    except Exception as err:  # noqa: BLE001 - the hub went away between two calls
        raise ModelNotFoundError(f"{repo.label()}: could not list its files ({type(err).__name__}: {err})") from None
    wanted = wanted_files(files, trust_remote_code, weights)
    if not any(fnmatch(f, p) for f in files for p, _ in _WEIGHTS if "/" not in f):
        raise ModelNotFoundError(
            f"{repo.label()} has no weights lorakit can load at its top level (model*.safetensors or "
            "pytorch_model*.bin); files: " + ", ".join(files[:12]) + (" ..." if len(files) > 12 else "")
        )
    log.info("model %s: downloading %d files at commit %s", name, len(wanted), commit)
    return download_snapshot(repo, None, wanted, ModelNotFoundError, revision=commit)
