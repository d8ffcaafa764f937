"""The dashboard's HTTP endpoints: one page, its script, and JSON under ``/api``.

Every request passes :func:`guarded` first (Host header, then token; see :mod:`lorakit.ui.guard`).
The page is a single HTML file with plain JavaScript (``page.html`` and its scripts), no
build step; it polls ``/api/runs/<name>/metrics?since=N`` for new rows of the curves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import tempfile
from importlib import resources
from pathlib import Path
from typing import Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import (HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response,
                               StreamingResponse)
from pydantic import BaseModel, Field

from lorakit.errors import LorakitError
from lorakit.run import RunFolder
from lorakit.ui import form, runs, text
from lorakit.ui.guard import COOKIE, Access, Refused, UIError
from lorakit.ui.jobs import Jobs
from lorakit.ui.use import Chats, preview

# The page's scripts, beside it in this package (and in pyproject.toml's package data).
SCRIPTS = ("chart", "compare", "completions", "chat", "page")


class RunForm(BaseModel):
    """The new-run form as the page sends it."""

    name: str
    values: dict[str, str | None] = Field(default_factory=dict)
    extra: str = ""  # key=value lines, as lorakit train --set reads them


class Turn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatForm(BaseModel):
    """The conversation so far, ending with the user's new turn; ``prompt`` alone is a one-turn conversation."""

    prompt: str = ""
    messages: list[Turn] = Field(default_factory=list)
    max_new_tokens: int = Field(64, gt=0, le=2048)
    base: bool = False  # answer with the base model too, beside the tuned one

    def conversation(self) -> list[dict[str, str]]:
        turns = [t.model_dump() for t in self.messages]
        if self.prompt:
            turns.append({"role": "user", "content": self.prompt})
        if not turns or turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
            raise UIError("the conversation must end with a user turn that says something")
        return turns


def _asset(name: str) -> str:
    return resources.files("lorakit.ui").joinpath(name).read_text(encoding="utf-8")


@dataclasses.dataclass
class _Dashboard:
    """What the endpoints share: the allowed folders, the processes started, the model loaded for chat."""

    access: Access
    jobs: Jobs
    chats: Chats

    def folder(self, name: str) -> tuple[Path, RunFolder]:
        path = self.access.run_path(name)
        return path, RunFolder(path)

    def write(self, req: RunForm, place: Path | None = None) -> form.Written:
        """The form's config file, in the run's workspace (or ``place``), loaded back as lorakit train loads it."""
        raw = form.build(req.name, req.values, req.extra, self.access)
        place = place or self.jobs.workspace(req.name)
        place.mkdir(parents=True, exist_ok=True)
        return form.write_config(place / self.jobs.config_file(req.name).name, raw)

    def with_adapter(self, name: str, what: str) -> tuple[Path, RunFolder]:
        """The run, refused until it has saved an adapter (which it does when it finishes or stops)."""
        path, run = self.folder(name)
        if not run.has_adapter():
            raise UIError(f"run {name!r} has not saved an adapter yet: {what} it once it has finished or stopped")
        return path, run

    def use_commands(self, name: str) -> dict[str, list[str]]:
        """merge and export for a run, writing beside it in the runs folder (where the dashboard may read)."""
        path, _ = self.folder(name)
        runs_folder = self.access.runs
        merged, gguf = runs_folder / f"{name}-merged", runs_folder / f"{name}-gguf" / f"{name}.gguf"
        return {"merge": ["lorakit", "merge", str(path), "--out", str(merged)],
                "export": ["lorakit", "export", "gguf", str(path), "--out", str(gguf), "--type", "q8_0"]}


def create_app(access: Access) -> FastAPI:
    board = _Dashboard(access, Jobs(access.runs), Chats())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        board.jobs.stop_all()  # what the dashboard started stops with it, each keeping a checkpoint

    app = FastAPI(title="lorakit ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.middleware("http")
    async def guarded(request: Request, call_next):
        # Cookies are shared by every port of a host: each dashboard names its own after its port.
        cookie = f"{COOKIE}_{request.url.port or 80}"
        try:
            access.check_host(request.headers.get("host"))
            access.check_token(request.cookies.get(cookie), request.headers.get("authorization"),
                               request.query_params.get("token"))
        except Refused as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        response = await call_next(request)
        if request.query_params.get("token"):
            # The URL's token becomes a cookie the page's own requests carry; other sites' pages cannot send it.
            response.set_cookie(cookie, access.token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(LorakitError)
    async def refused(request: Request, e: LorakitError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=getattr(e, "status", 400))

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> Response:
        if request.query_params.get("token"):  # drop the token from the address bar (and history)
            return RedirectResponse("/", status_code=303)
        return HTMLResponse(_asset("page.html"))

    @app.get("/{script}.js")
    def script(script: str) -> Response:
        if script not in SCRIPTS:
            raise Refused(f"no such script: {script}.js", 404)
        return Response(_asset(f"{script}.js"), media_type="text/javascript")

    @app.get("/api/text")
    def words() -> dict:
        return text.LANGUAGES

    @app.get("/api/form")
    def fields() -> dict:
        return {"knobs": [dataclasses.asdict(k) for k in form.knobs()], "runs": str(access.runs),
                "data": [str(p) for p in access.data]}

    _watch(app, board)
    _new_run(app, board)
    _use(app, board)
    return app


def _watch(app: FastAPI, board: _Dashboard) -> None:
    """The runs list, a run's page and curves, its config file, stop and resume."""
    access, jobs, folder = board.access, board.jobs, board.folder

    @app.get("/api/runs")
    def all_runs() -> list[dict]:
        return [dataclasses.asdict(r) for r in runs.list_runs(access.runs, jobs)]

    @app.get("/api/runs/{name}")
    def one_run(name: str) -> dict:
        _, run = folder(name)
        if not run.is_run() and runs.state_of(name, run, jobs) is None:
            raise Refused(f"no run called {name!r} in {access.runs}", 404)
        return runs.detail(name, run, jobs)

    @app.get("/api/runs/{name}/metrics")
    def metrics(name: str, since: int = 0) -> dict:
        _, run = folder(name)
        rows = runs.read_rows(run, max(since, 0))
        return {"rows": rows, "next": max(since, 0) + len(rows)}

    @app.get("/api/runs/{name}/completions")
    def completions(name: str, step: str | None = None) -> dict:
        """A GRPO run's sample of completions at ``step`` (the latest when not given), and the steps with one."""
        _, run = folder(name)
        return dataclasses.asdict(runs.read_sample(run, step))

    @app.get("/api/runs/{name}/config.yaml")
    def config_file(name: str) -> Response:
        _, run = folder(name)
        written = jobs.config_file(name)
        source = written if written.is_file() else run.config_file
        if not source.is_file():
            raise Refused(f"run {name!r} has no config yet", 404)
        return PlainTextResponse(source.read_text(encoding="utf-8"), media_type="application/x-yaml",
                                 headers={"Content-Disposition": f'attachment; filename="{name}.yaml"'})

    @app.post("/api/runs/{name}/stop")
    def stop(name: str) -> dict:
        folder(name)
        jobs.stop(name)
        return {"stopping": name}

    @app.post("/api/runs/{name}/resume")
    def resume(name: str) -> dict:
        path, _ = folder(name)
        board.chats.forget(path)
        return {"command": jobs.start(name, resume=True)}


def _new_run(app: FastAPI, board: _Dashboard) -> None:
    """The new-run form: its config shown, a data file uploaded, the data previewed, the run started."""
    access, jobs, folder, write = board.access, board.jobs, board.folder, board.write

    @app.post("/api/config")
    def config_text(req: RunForm) -> dict:
        """The config the form makes, checked as ``lorakit train`` checks it; nothing is started nor kept."""
        with tempfile.TemporaryDirectory(prefix="lorakit-ui-") as place:
            return {"yaml": write(req, Path(place)).text}

    @app.post("/api/runs")
    def start(req: RunForm) -> dict:
        _, run = folder(req.name)
        if run.is_run() or jobs.running(req.name):
            raise UIError(f"a run called {req.name!r} exists already in {access.runs}: pick another name")
        written = write(req)
        command = jobs.start(req.name)
        return {"yaml": written.text, "command": command}

    @app.put("/api/uploads/{name}/{filename}")
    async def upload(name: str, filename: str, request: Request) -> dict:
        """A data file sent from the browser, saved beside the run's config; its path goes into data.train."""
        access.run_path(name)  # the run's name is checked as everywhere
        if not form.NAME.fullmatch(filename) or not filename.endswith(form.DATA_SUFFIXES):
            raise UIError(f"upload {filename!r}: give a data file named with letters, digits, '_', '-' or '.', "
                          f"ending {', '.join(form.DATA_SUFFIXES)}")
        place = jobs.workspace(name)
        place.mkdir(parents=True, exist_ok=True)
        target = place / filename
        with target.open("wb") as fh:  # streamed: a large file is never held in memory whole
            async for chunk in request.stream():
                fh.write(chunk)
        return {"path": str(target)}

    @app.post("/api/preview")
    async def data_preview(req: RunForm) -> dict:
        """The data doctor and a few rendered samples for the form's config, refused as lorakit train refuses it."""
        with tempfile.TemporaryDirectory(prefix="lorakit-ui-") as place:
            cfg = write(req, Path(place)).config
        return await anyio.to_thread.run_sync(preview, cfg)


def _use(app: FastAPI, board: _Dashboard) -> None:
    """Chat with a run, merge it and export it."""
    jobs, use_commands = board.jobs, board.use_commands

    @app.post("/api/runs/{name}/chat")
    def chat(name: str, req: ChatForm) -> StreamingResponse:
        """The answers to the conversation piece by piece, as JSON lines (the page shows them as they come)."""
        path, run = board.with_adapter(name, "chat with")
        cache = run.read_config().model.cache_dir
        pieces = board.chats.stream(path, cache, req.conversation(), req.max_new_tokens, req.base)
        return StreamingResponse(pieces, media_type="application/x-ndjson", headers={"Cache-Control": "no-cache"})

    @app.get("/api/runs/{name}/commands")
    def commands(name: str) -> dict:
        """What the page's merge and export buttons run, as a terminal would take it, and how each one went."""
        return {kind: {"command": shlex.join(words), "state": jobs.task_state(name, kind)}
                for kind, words in use_commands(name).items()}

    @app.post("/api/runs/{name}/tasks/{kind}")
    def run_task(name: str, kind: str) -> dict:
        words = use_commands(name).get(kind)
        if words is None:
            raise Refused(f"no such task: {kind} (merge or export)", 404)
        board.with_adapter(name, kind)
        jobs.run_task(name, kind, words)
        return {"command": shlex.join(words)}


def serve(access: Access, host: str, port: int) -> None:
    """Run until Ctrl-C; what the dashboard started is stopped (with a checkpoint) on the way out."""
    import uvicorn

    uvicorn.run(create_app(access), host=host, port=port, log_level="warning")
