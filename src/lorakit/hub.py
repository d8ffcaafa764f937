"""The Hugging Face hub, as models and datasets both use it: cache first, then download.

A repo is looked up in huggingface_hub's own cache (``HF_HUB_CACHE`` / ``HF_HOME``) without
any request; only when it is missing there, and downloading is allowed (the config's switch,
and ``HF_HUB_OFFLINE`` unset), is it fetched with ``snapshot_download``. Tokens (``HF_TOKEN``,
``hf auth login``) and ``HF_ENDPOINT`` are huggingface_hub's business and are left to it.
Every failure ends in one message that names the repo and says how to get it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HubRepo:
    """A repo as the config names it, plus the config key that allows downloading it."""

    id: str
    kind: str  # "model" or "dataset"
    revision: str | None
    switch: str  # e.g. "model.download"

    def label(self) -> str:
        at = f" at revision '{self.revision}'" if self.revision else ""
        return f"{self.kind} '{self.id}'{at}"

    def download_command(self) -> str:
        parts = ["hf download"]
        if self.kind == "dataset":
            parts.append("--repo-type dataset")
        if self.revision:
            parts.append(f"--revision {self.revision}")
        return " ".join([*parts, self.id])


def looks_like_hub_id(name: str, file_like: bool = True) -> bool:
    """``owner/name``: one slash, neither end empty, not a relative or absolute path, not a glob.

    ``file_like=False``, for data sources: a name with a file suffix (``owner/data.jsonl``) is a
    local file that is missing, not a repo. Model ids keep theirs (``Qwen/Qwen2.5-0.5B``).
    """
    owner, _, repo = name.partition("/")
    if name.count("/") != 1 or not owner or not repo or name.startswith((".", "~")) or any(c in name for c in "*?["):
        return False
    return file_like or not Path(name).suffix


def cache_location(cache_dir: Path | None) -> str:
    from huggingface_hub import constants

    return str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _missing(repo: HubRepo, cache_dir: Path | None, reason: str, fix: str) -> str:
    return (
        f"{repo.label()} is not in the local Hugging Face cache ({cache_location(cache_dir)}) and {reason}. "
        f"{fix}, or download it once where the network allows (`{repo.download_command()}`, "
        "with HF_HOME or HF_HUB_CACHE naming the same cache)."
    )


def repo_files(repo: HubRepo, cache_dir: Path | None, commit: str | None = None) -> list[str] | None:
    """The repo's file list as cached by the download that filled the snapshot (no request), or None.

    ``commit``: ask the hub for the list of this commit when the cache has none (one request).
    """
    import huggingface_hub
    from huggingface_hub import errors

    revision = commit or repo.revision
    # Newer huggingface_hub versions keep each commit's file listing beside the snapshots.
    cached = getattr(huggingface_hub, "get_cached_repo_tree", None)
    not_kept = getattr(errors, "CachedRepoTreeNotFoundError", ())
    if cached is not None:
        try:
            return [f.path for f in cached(repo.id, repo_type=repo.kind, revision=revision, cache_dir=cache_dir)]
        except not_kept:
            pass
    if commit is None:
        return None
    return huggingface_hub.HfApi().list_repo_files(repo.id, repo_type=repo.kind, revision=commit)


def cached_snapshot(
    repo: HubRepo, cache_dir: Path | None, patterns: Callable[[list[str]], list[str]] | None = None
) -> Path | None:
    """The complete local snapshot of ``repo``, or None; never makes a request.

    ``patterns`` picks the wanted files from the repo's file list (cached by the download that
    filled the snapshot); the snapshot counts only if every wanted file is in it.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    files = repo_files(repo, cache_dir) if patterns is not None else None
    # Without a kept listing (an older huggingface_hub, or a cache filled by hand) the folder is taken as is.
    allow = patterns(files) if files is not None else None
    try:
        return Path(snapshot_download(
            repo.id, repo_type=repo.kind, revision=repo.revision, cache_dir=cache_dir,
            local_files_only=True, allow_patterns=allow,
        ))
    except LocalEntryNotFoundError:  # also an incomplete snapshot: a download that never finished
        return None


def check_download_allowed(repo: HubRepo, cache_dir: Path | None, allowed: bool, error: type[Exception]) -> None:
    """Refuse before any request when the config or HF_HUB_OFFLINE says the network is off limits."""
    from huggingface_hub import constants

    if not allowed:
        raise error(_missing(repo, cache_dir, f"{repo.switch} is false", f"Set {repo.switch}: true to fetch it"))
    if constants.is_offline_mode():
        raise error(_missing(repo, cache_dir, "HF_HUB_OFFLINE is set",
                             "Unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to let lorakit fetch it"))


@contextmanager
def _progress_shown():
    """The download's own progress bars, even where a command has switched transformers' bars off."""
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hidden = are_progress_bars_disabled()
    if hidden and constants.HF_HUB_DISABLE_PROGRESS_BARS is not True:
        enable_progress_bars()
        try:
            yield
        finally:
            disable_progress_bars()
    else:
        yield


def download_snapshot(
    repo: HubRepo, cache_dir: Path | None, allow_patterns: list[str] | None, error: type[Exception],
    revision: str | None = None,
) -> Path:
    """``snapshot_download`` of the wanted files; any failure becomes ``error`` with what to do.

    ``revision``: fetch this commit instead of ``repo.revision`` (already resolved by an earlier call).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    where = _endpoint()
    try:
        with _progress_shown():
            return Path(snapshot_download(
                repo.id, repo_type=repo.kind, revision=revision or repo.revision, cache_dir=cache_dir,
                allow_patterns=allow_patterns,
            ))
    except GatedRepoError:
        message = (f"{repo.label()} is gated: accept its conditions at {where}/{_web_path(repo)} and log in "
                   "(`hf auth login`, or set HF_TOKEN) with that account")
    except RevisionNotFoundError:
        message = f"{repo.label()} does not exist on the hub ({where}): check {repo.kind}.revision"
    except RepositoryNotFoundError:
        message = (f"{repo.kind} '{repo.id}' was not found on the hub ({where}): check the name; if it is "
                   "private or gated, log in (`hf auth login`) or set HF_TOKEN")
    except Exception as err:  # noqa: BLE001 - network errors of whichever HTTP client huggingface_hub uses
        # LocalEntryNotFoundError here means the hub could not be reached and nothing is cached.
        cause = err.__cause__ or err
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            reason = f"the hub ({where}) answered HTTP {cause.response.status_code}"
        else:
            detail = str(cause).splitlines()[0][:200] if str(cause) else ""
            reason = f"the hub ({where}) could not be reached ({type(cause).__name__}{': ' + detail if detail else ''})"
        message = _missing(repo, cache_dir, reason, "Check the network (or HF_ENDPOINT)")
    raise error(message)


def _web_path(repo: HubRepo) -> str:
    return f"datasets/{repo.id}" if repo.kind == "dataset" else repo.id
