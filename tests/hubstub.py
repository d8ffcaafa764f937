"""A stand-in for the Hugging Face hub on 127.0.0.1, serving repos from folders on disk.

It answers just what the installed huggingface_hub asks while downloading a snapshot:

- ``GET /api/{models,datasets}/{owner}/{name}/revision/{rev}``: the repo info (``sha``, ``siblings``)
- ``GET /api/{models,datasets}/{owner}/{name}/tree/{rev}``: the file list (``type``, ``path``, ``size``, ``oid``)
- ``HEAD``/``GET /{owner}/{name}/resolve/{rev}/{file}`` and ``/datasets/...``: a file, with
  ``X-Repo-Commit``, ``ETag`` and ``Content-Length``; no xet headers, so plain HTTP is used

Unknown repos, revisions and files get 404 with the hub's ``X-Error-Code`` header, which
huggingface_hub turns into its own errors. Every request is counted (``requests``), so a test can
show that a second run asked for nothing. Point the real huggingface_hub at it with
``HF_ENDPOINT=stub.url`` (a subprocess) or by patching ``huggingface_hub.constants`` (in process).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class _Revision:
    folder: Path
    commit: str
    files: dict[str, Path]  # repo path -> file on disk


@dataclass
class _Repo:
    revisions: dict[str, _Revision] = field(default_factory=dict)  # branch or tag -> revision

    def find(self, rev: str) -> _Revision | None:
        if rev in self.revisions:
            return self.revisions[rev]
        return next((r for r in self.revisions.values() if r.commit == rev), None)


def _commit_of(repo_id: str, files: dict[str, Path]) -> str:
    digest = hashlib.sha1(repo_id.encode())
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha1(files[path].read_bytes()).digest())
    return digest.hexdigest()


def _etag(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class HubStub:
    """``with HubStub() as hub: hub.add_model("org/name", folder); ... hub.url``."""

    def __init__(self) -> None:
        self._repos: dict[tuple[str, str], _Repo] = {}  # (kind, id) -> repo
        self._lock = threading.Lock()
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        self.authorization: list[str | None] = []  # the Authorization header of every request
        self._gated: dict[tuple[str, str], str] = {}  # (kind, id) -> the token that has access
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- content
    def add_model(self, repo_id: str, folder: Path, revision: str = "main") -> str:
        return self._add("models", repo_id, folder, revision)

    def add_dataset(self, repo_id: str, folder: Path, revision: str = "main") -> str:
        return self._add("datasets", repo_id, folder, revision)

    def _add(self, kind: str, repo_id: str, folder: Path, revision: str) -> str:
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        commit = _commit_of(f"{kind}/{repo_id}/{revision}", files)
        self._repos.setdefault((kind, repo_id), _Repo()).revisions[revision] = _Revision(folder, commit, files)
        return commit

    def gate(self, repo_id: str, token: str, kind: str = "models") -> None:
        """Serve ``repo_id`` only to requests carrying ``token``, as the hub does for a gated repo."""
        self._gated[(kind, repo_id)] = token

    def commit(self, repo_id: str, revision: str = "main", kind: str = "models") -> str:
        return self._repos[(kind, repo_id)].revisions[revision].commit

    # --- counting
    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.log)

    def _record(self, method: str, path: str, authorization: str | None) -> None:
        with self._lock:
            self.log.append((method, path))
            self.authorization.append(authorization)

    def fetched(self) -> list[str]:
        """The files downloaded (GET of a resolve URL), by repo path."""
        with self._lock:
            return [path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in self.log
                    if method == "GET" and "/resolve/" in path]

    # --- server
    def start(self) -> "HubStub":
        stub = self

        class Handler(_Handler):
            hub = stub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hubstub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "HubStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- answers: (status, headers, body)
    def answer(self, path: str, authorization: str | None = None) -> tuple[int, dict[str, str], bytes]:
        parts = [unquote(p) for p in urlsplit(path).path.strip("/").split("/")]
        if parts == ["api", "agent-harnesses"]:  # huggingface_hub's own registry, fetched once a day
            return 200, {"Content-Type": "application/json"}, b'{"standardEnvVars": [], "harnesses": {}}'
        if parts[:1] == ["api"] and len(parts) >= 6 and parts[1] in ("models", "datasets"):
            kind, repo_id, action, rev = parts[1], f"{parts[2]}/{parts[3]}", parts[4], parts[5]
            found = self._lookup(kind, repo_id, rev, authorization)
            if isinstance(found, tuple):
                return found
            if action == "revision":
                return self._json({"id": repo_id, "sha": found.commit, "private": False,
                                   "siblings": [{"rfilename": p} for p in found.files]}, found.commit)
            if action == "tree":
                entries = [{"type": "file", "path": p, "size": f.stat().st_size,
                            "oid": hashlib.sha1(f.read_bytes()).hexdigest()} for p, f in found.files.items()]
                return self._json(entries, found.commit)
        kind = "datasets" if parts[:1] == ["datasets"] else "models"
        if kind == "datasets":
            parts = parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, rev, file = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
            found = self._lookup(kind, repo_id, rev, authorization)
            if isinstance(found, tuple):
                return found
            if file not in found.files:
                return 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": f"{file} does not exist",
                             "X-Repo-Commit": found.commit}, b""
            data = found.files[file].read_bytes()
            return 200, {"X-Repo-Commit": found.commit, "ETag": f'"{_etag(found.files[file])}"',
                         "Content-Type": "application/octet-stream"}, data
        return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b""

    def _lookup(self, kind: str, repo_id: str, rev: str, authorization: str | None):
        repo = self._repos.get((kind, repo_id))
        token = self._gated.get((kind, repo_id))
        if repo is not None and token is not None and authorization != f"Bearer {token}":
            return 401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this repo is restricted"}, b""
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b""
        found = repo.find(rev)
        if found is None:
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id: " + rev}, b""
        return found

    @staticmethod
    def _json(value, commit: str) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/json", "X-Repo-Commit": commit}, json.dumps(value).encode()


class _Handler(BaseHTTPRequestHandler):
    hub: HubStub
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects

    def _reply(self, with_body: bool) -> None:
        self.hub._record(self.command, self.path, self.headers.get("Authorization"))
        status, headers, body = self.hub.answer(self.path, self.headers.get("Authorization"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._reply(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(False)

    def log_message(self, *args) -> None:  # quiet: the test's output is what matters
        pass
