"""Who may use the dashboard, and which files it may touch.

The dashboard starts training processes and reads files, so it is guarded as a Jupyter
server is: a random token is made at start and printed in the URL; the page's first request
trades it for a cookie (``HttpOnly``, ``SameSite=Strict``, so another site's page cannot send
it), and every other request must carry the cookie or ``Authorization: Bearer <token>``.
Requests addressed to a name other than a loopback one are refused unless the server was
given a key, so a web page whose domain is re-bound to 127.0.0.1 cannot reach it; a server on
a non-loopback interface needs that key (it replaces the token, and is given, not printed).

No file outside the runs folder and the data folders the user named is read or listed: every
path from a request goes through :meth:`Access.path`, which resolves it (``..`` and symlinks
included) before checking where it lands.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.serve.app import LOOPBACK_NAMES, host_name

COOKIE = "lorakit_ui"


class UIError(LorakitError, ValueError):
    """A request or a setting of lorakit ui that the dashboard refuses; the message says why and what to do."""

    status = 400


class Refused(UIError):
    """A request without the token, to a foreign Host, or for a path outside the allowed folders."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """``host`` (an interface to listen on) is reachable from this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Access:
    """The server's token and the folders it may read: the runs folder and the data folders named."""

    runs: Path
    data: list[Path] = field(default_factory=list)
    key: str | None = None  # given for a non-loopback host; replaces the printed token
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def __post_init__(self) -> None:
        self.runs = self.runs.resolve()
        self.data = [p.resolve() for p in self.data]
        if self.key is not None:
            self.token = self.key

    @property
    def roots(self) -> list[Path]:
        return [self.runs, *self.data]

    def check_host(self, header: str | None) -> None:
        if self.key is None and host_name(header or "") not in LOOPBACK_NAMES:
            raise Refused(f"this dashboard has no key, so it answers only requests addressed to localhost, "
                          f"127.0.0.1 or [::1], not to {header!r}; start it with --key to serve other names")

    def check_token(self, cookie: str | None, authorization: str | None, query: str | None) -> None:
        """One of the three must carry the token; each is compared in constant time."""
        scheme, _, bearer = (authorization or "").strip().partition(" ")
        given = [cookie, bearer.strip() if scheme.lower() == "bearer" else None, query]
        if not any(g and secrets.compare_digest(g.encode(), self.token.encode()) for g in given):
            raise Refused("missing or wrong token: open the URL `lorakit ui` printed (it carries ?token=...)", 401)

    def path(self, given: str | Path, what: str = "path") -> Path:
        """``given`` resolved, when it lands inside an allowed folder; refused (naming them) when not.

        Resolving first follows every ``..`` and symlink, so neither can lead out of the folders.
        """
        text = str(given)
        if not text.strip():
            raise Refused(f"{what}: empty path")
        raw = Path(os.path.expanduser(text))
        try:
            resolved = (raw if raw.is_absolute() else Path.cwd() / raw).resolve()
        except (OSError, RuntimeError):
            raise Refused(f"{what}: {text} cannot be resolved (a symlink loop?)") from None
        if not any(resolved == root or resolved.is_relative_to(root) for root in self.roots):
            folders = ", ".join(str(r) for r in self.roots)
            raise Refused(f"{what}: {text} is outside the folders this dashboard may read ({folders}); "
                          "start `lorakit ui` with --data FOLDER to allow another one")
        return resolved

    def run_path(self, name: str) -> Path:
        """The folder of the run called ``name``: one name directly inside the runs folder, nothing else."""
        if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
            raise Refused(f"{name!r} is not a run's name: give the name of a folder inside {self.runs}")
        path = self.path(self.runs / name, "run")
        if path.parent != self.runs:  # a symlinked run folder that leads elsewhere
            raise Refused(f"run {name!r} leads outside {self.runs}")
        return path
