"""``lorakit ui``: the local dashboard (``lorakit.ui``): set up, run, watch, compare and chat with runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.commands.common import err, fail, setup_logging


def ui(
    runs: Annotated[Path, typer.Option(help="The folder of runs to show; new runs are written here.")] = Path("runs"),
    data: Annotated[list[Path], typer.Option(
        "--data", help="A folder whose files the dashboard may read as data or models (repeatable); default: the "
        "current folder. Nothing outside these and --runs is read or listed.")] = [],
    host: Annotated[str, typer.Option(help="Interface to listen on; loopback by default (this machine only).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    key: Annotated[Optional[str], typer.Option(
        help="The token to require instead of a random one; needed with a non-loopback --host.",
        envvar="LORAKIT_UI_KEY")] = None,
) -> None:
    """A local web dashboard: new runs from a form, live curves, stop and resume, compare, data preview, chat.

    Prints its URL with a one-time token, as Jupyter does; stop it with Ctrl-C (training it started
    keeps a checkpoint and can be resumed).
    """
    setup_logging(False)
    from lorakit.ui.app import serve
    from lorakit.ui.guard import Access, is_loopback

    if not is_loopback(host) and not key:
        fail(f"--host {host} lets other machines reach the dashboard, which starts processes and reads files: "
             "give --key (or LORAKIT_UI_KEY) so they need it, or keep the default 127.0.0.1")
    runs.mkdir(parents=True, exist_ok=True)
    access = Access(runs, data or [Path.cwd()], key=key)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    token = "" if key else f"/?token={access.token}"
    err.print(f"lorakit ui: runs in {access.runs}; data from {', '.join(map(str, access.data))}", highlight=False)
    print(f"http://{shown}:{port}{token}", flush=True)
    serve(access, host, port)
