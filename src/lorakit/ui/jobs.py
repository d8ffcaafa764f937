"""The training processes the dashboard starts: ``lorakit train`` on the config the form wrote.

Each run the UI starts has a small workspace beside the runs, ``<runs>/.ui/<name>/``: the
config file (``config.yaml``, what ``lorakit train`` reads), the process's output
(``train.log``) and its exit status (``exit``); a merge or export started from a run's page
writes its output there too (``merge.log``, ``export.log``). It is kept out of the run folder itself because
``lorakit train`` refuses to write among files it did not write. Stop sends SIGTERM, on which
training saves a checkpoint and exits with 143; resume runs the same command with
``--resume=latest``. A run with no workspace (started from a terminal) is still listed and
watched; only its process is not the dashboard's to stop.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from lorakit.ui.guard import UIError

WORKSPACE = ".ui"
CONFIG = "config.yaml"
LOG = "train.log"
EXIT = "exit"
STOPPED_CODES = (130, 143, -signal.SIGTERM, -signal.SIGINT)  # Ctrl-C or SIGTERM: a checkpoint was kept


def _launch(args: list[str], log: Path) -> subprocess.Popen:
    """``lorakit ARGS`` as a process of its own session (a Ctrl-C meant for the dashboard does not stop it)."""
    with open(log, "a", encoding="utf-8") as out:
        return subprocess.Popen([sys.executable, "-m", "lorakit", *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, "COLUMNS": "200"})


class Jobs:
    """The processes started from this dashboard, by run name."""

    def __init__(self, runs: Path):
        self.runs = runs
        self._procs: dict[str, subprocess.Popen] = {}  # training, by run name
        self._tasks: dict[tuple[str, str], subprocess.Popen] = {}  # merge and export, by run name and kind
        self._lock = threading.Lock()

    def workspace(self, name: str) -> Path:
        return self.runs / WORKSPACE / name

    def config_file(self, name: str) -> Path:
        return self.workspace(name) / CONFIG

    def running(self, name: str) -> bool:
        proc = self._procs.get(name)
        if proc is None or proc.poll() is None:
            return proc is not None
        self._record(name, proc.returncode)
        return False

    def _record(self, name: str, code: int) -> None:
        (self.workspace(name) / EXIT).write_text(str(code), encoding="utf-8")

    def exit_code(self, name: str) -> int | None:
        """How the UI's last process for ``name`` ended; None while it runs or when the UI never ran one."""
        if self.running(name):
            return None
        path = self.workspace(name) / EXIT
        try:
            return int(path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def error_line(self, name: str) -> str | None:
        """The ``error:`` line the process printed last (lorakit's one-line errors), else its last line."""
        try:
            lines = [ln.strip() for ln in (self.workspace(name) / LOG).read_text(encoding="utf-8").splitlines()]
        except OSError:
            return None
        lines = [ln for ln in lines if ln]
        errors = [ln for ln in lines if ln.startswith("error:")]
        return (errors or lines or [None])[-1]

    def start(self, name: str, resume: bool = False) -> list[str]:
        """Start ``lorakit train`` on the run's config (resumed from its latest checkpoint); the command run."""
        with self._lock:
            if self.running(name):
                raise UIError(f"run {name} is training already; stop it first")
            config = self.config_file(name)
            if not config.is_file():
                raise UIError(f"run {name} was not started from this dashboard: resume it with "
                              f"`lorakit train <its config> --resume` in a terminal")
            (self.workspace(name) / EXIT).unlink(missing_ok=True)
            args = ["train", str(config), *(["--resume=latest"] if resume else [])]
            self._procs[name] = _launch(args, self.workspace(name) / LOG)
            return ["lorakit", "train", str(config), *(["--resume"] if resume else [])]

    def run_task(self, name: str, kind: str, command: list[str]) -> None:
        """Start ``command`` (``lorakit merge ...`` or ``export ...``) for run ``name``; output in ``<kind>.log``."""
        with self._lock:
            if self.task_state(name, kind)["running"]:
                raise UIError(f"{kind} of run {name} is running already")
            self.workspace(name).mkdir(parents=True, exist_ok=True)
            log = self.workspace(name) / f"{kind}.log"
            log.unlink(missing_ok=True)
            self._tasks[(name, kind)] = _launch(command[1:], log)

    def task_state(self, name: str, kind: str) -> dict:
        """Whether the task runs, how it ended (None: still running or never run here) and its last lines."""
        proc = self._tasks.get((name, kind))
        try:
            lines = (self.workspace(name) / f"{kind}.log").read_text(encoding="utf-8").splitlines()
        except OSError:
            lines = []
        return {"running": proc is not None and proc.poll() is None,
                "exit": proc.poll() if proc is not None else None, "log": [ln for ln in lines if ln.strip()][-5:]}

    def stop(self, name: str) -> None:
        """SIGTERM to the run's training: it saves a checkpoint, then exits with 143.

        A run this dashboard's config started, whose process an earlier dashboard launched, is
        found by its folder's lock, which names the training's PID and host.
        """
        from lorakit.train.run_folder import holder

        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            return
        owner = holder(self.runs / name) if self.config_file(name).is_file() else None
        if owner and owner.get("pid") and owner.get("host") == socket.gethostname():
            os.kill(int(owner["pid"]), signal.SIGTERM)
            return
        raise UIError(f"run {name} is not training from this dashboard")

    def stop_all(self, timeout: float = 30.0) -> None:
        """On the dashboard's exit: stop what it started, each keeping a checkpoint."""
        for name, proc in list(self._procs.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in list(self._procs.items()):
            try:
                self._record(name, proc.wait(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
