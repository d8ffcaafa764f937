"""An OpenAI-compatible HTTP server over a catalog of models (the base and named adapters).

One model is loaded; generation runs one request at a time under the catalog's lock (a
CPU gains nothing from interleaving two generations, and the active adapter is global
state). ``max_pending`` bounds how many requests may run or wait; the next is refused with
429 at once instead of queueing without limit. Prompts are built by the same function as
in training and ``lorakit chat``: the run's chat template, tokenized without extra BOS.

A generation nobody waits for is stopped: a stream when its client closes it, a plain
request when its client disconnects before the answer is whole. Without an API key the
server answers only requests addressed to a loopback name (``Host: localhost``, ``127.0.0.1``,
``[::1]``), so a web page whose domain was re-bound to 127.0.0.1 cannot use it.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from importlib import resources

import anyio
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from lorakit.config import GenerationConfig
from lorakit.infer.catalog import Catalog, Choice
from lorakit.infer.generate import Answer, context_length, prompt_ids
from lorakit.infer.stream import TextStream
from lorakit.serve.errors import APIError, install_error_handlers
from lorakit.serve.schemas import ChatRequest, CompletionRequest, _Sampling
from lorakit.templates import Conversation

log = logging.getLogger(__name__)

_END = object()
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
DISCONNECT_POLL_S = 0.1  # how often a waiting plain request checks that its client is still there


class ServeConfig(BaseModel):
    """Settings of ``lorakit serve``, given on its command line (a training config has no use for them)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = Field("127.0.0.1", description="Loopback by default: nothing outside this machine can reach it.")
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="When set, requests need 'Authorization: Bearer <key>'.")
    max_pending: int = Field(
        16, gt=0, description="Requests running or waiting at once; more are refused with 429 rather than queued."
    )


def host_name(header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``, ``localhost:8000`` -> ``localhost``."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def chat_prompt_ids(choice: Choice, conversation: Conversation) -> list[int]:
    """The tokens a chat request is answered from: exactly what training put before an answer."""
    return prompt_ids(choice.tokenizer, choice.template, conversation)


class _Job:
    """One admitted request: its generation and its place among the pending ones."""

    def __init__(self, stream: TextStream, slots: threading.Semaphore):
        self.stream = stream
        self._slots = slots
        self._done = threading.Lock()
        self._finished = False

    def finish(self) -> None:
        """Stop generating (if still going) and give the place back; safe to call twice."""
        with self._done:
            if self._finished:
                return
            self._finished = True
        self.stream.cancel()
        self._slots.release()


def _usage(answer: Answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.new_tokens,
            "total_tokens": answer.prompt_tokens + answer.new_tokens}


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


async def _read_unless_abandoned(job: _Job, request: Request) -> Answer:
    """Wait for the whole answer, but stop generating if the client leaves first (no one would read it)."""
    outcome: dict = {}

    async def read() -> None:
        try:
            outcome["answer"] = await anyio.to_thread.run_sync(job.stream.read)
        except Exception as err:  # re-raised below, outside the task group (which would wrap it)
            outcome["error"] = err
        group.cancel_scope.cancel()  # the answer is here: stop watching

    async with anyio.create_task_group() as group:
        group.start_soon(read)
        while not await request.is_disconnected():
            await anyio.sleep(DISCONNECT_POLL_S)
        log.info("the client of %s left before its answer: generation stopped", request.url.path)
        job.stream.cancel()  # read() then returns after the current token
    if "error" in outcome:
        raise outcome["error"]
    return outcome["answer"]


class _Server:
    """What every endpoint shares: the catalog, the default generation settings, and the places left."""

    def __init__(self, catalog: Catalog, gen: GenerationConfig, settings: ServeConfig):
        self.catalog, self.gen, self.settings = catalog, gen, settings
        self.slots = threading.BoundedSemaphore(settings.max_pending)
        self.limit = context_length(catalog.model, gen)
        self.started = int(time.time())

    def loopback_only(self, host: str | None = Header(None)) -> None:
        if self.settings.api_key is None and host_name(host or "") not in LOOPBACK_NAMES:
            raise APIError(403, f"this server has no API key, so it answers only requests addressed to localhost, "
                           f"127.0.0.1 or [::1], not to {host!r}; start it with --api-key to serve other names",
                           code="host_not_allowed")

    def authorize(self, authorization: str | None = Header(None)) -> None:
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
            raise APIError(401, "incorrect or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def lookup(self, name: str) -> Choice:
        if name not in self.catalog.choices:
            raise APIError(404, f"the model '{name}' does not exist; this server has: "
                           f"{', '.join(self.catalog.names())}", "model", "model_not_found")
        return self.catalog.choices[name]

    def model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self.started, "owned_by": "lorakit"}

    def plan(self, ids: list[int], req: _Sampling, requested: int | None) -> GenerationConfig:
        """The request's generation settings, refused with 400 when prompt plus answer cannot fit."""
        limit = self.limit
        if requested is not None and len(ids) + requested > limit:
            raise APIError(400, f"this model's context is {limit} tokens; the request asks for "
                           f"{len(ids) + requested} ({len(ids)} in the prompt, {requested} for the answer). "
                           "Shorten the prompt or lower max_tokens.", "messages", "context_length_exceeded")
        if len(ids) >= limit:
            raise APIError(400, f"this model's context is {limit} tokens; the prompt alone has {len(ids)}. "
                           "Shorten it.", "messages", "context_length_exceeded")
        new_tokens = requested if requested is not None else min(self.gen.max_new_tokens, limit - len(ids))
        values = {**self.gen.model_dump(), **req.generation_overrides(), "max_new_tokens": new_tokens}
        return GenerationConfig(**values)

    def admit(self, choice: Choice, ids: list[int], request_gen: GenerationConfig, stops: list[str],
              chat: bool) -> _Job:
        if not self.slots.acquire(blocking=False):
            raise APIError(429, f"the server is busy ({self.settings.max_pending} requests running or waiting); "
                           "retry shortly", code="server_busy")
        try:
            stream = TextStream(self.catalog.model, choice.tokenizer, ids, request_gen, choice.template.end_token_ids,
                                stops, hold=lambda: self.catalog.hold(choice.name), strip_leading=chat)
        except BaseException:
            self.slots.release()
            raise
        return _Job(stream, self.slots)

    async def respond(self, job: _Job, req: _Sampling, request: Request, head: dict, objects: tuple[str, str],
                      piece_fields: Callable[[str | None], dict], answer_fields: Callable[[Answer], dict]):
        """Stream the job as server-sent events, or wait for it and send one body.

        ``objects`` names the chunk and the whole-answer object; the two callables give the
        endpoint's own fields of a choice (a delta or text for a piece, a message or text for the answer).
        """
        if req.stream:
            def chunk(piece: str | None, reason: str | None) -> dict:
                return {**head, "object": objects[0],
                        "choices": [{"index": 0, **piece_fields(piece), "finish_reason": reason}]}

            include = req.stream_options is not None and req.stream_options.include_usage
            usage = (lambda u: {**head, "object": objects[0], "choices": [], "usage": u}) if include else None
            return _streamed(job, chunk, usage)
        try:
            answer = await _read_unless_abandoned(job, request)
        finally:
            job.finish()
        return {**head, "object": objects[1],
                "choices": [{"index": 0, **answer_fields(answer), "finish_reason": answer.finish_reason}],
                "usage": _usage(answer)}


def _streamed(job: _Job, chunk: Callable[[str | None, str | None], dict],
              usage_chunk: Callable[[dict], dict] | None) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        pieces = iter(job.stream)
        try:
            yield _sse(chunk(None, None))
            while (piece := await anyio.to_thread.run_sync(next, pieces, _END)) is not _END:
                yield _sse(chunk(piece, None))
            answer = job.stream.answer
            job.finish()  # the model is free: give the place back before the client hears the end
            yield _sse(chunk("", answer.finish_reason))
            if usage_chunk is not None:
                yield _sse(usage_chunk(_usage(answer)))
            yield _sse("[DONE]")
        except Exception as err:  # headers are sent: the error travels as an event
            log.exception("streamed generation failed")
            yield _sse(APIError(500, f"generation failed: {type(err).__name__}: {err}").body())
        finally:
            job.finish()

    # The background task also covers a client that leaves before the first event.
    return StreamingResponse(events(), media_type="text/event-stream", background=BackgroundTask(job.finish),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_app(catalog: Catalog, gen: GenerationConfig, settings: ServeConfig) -> FastAPI:
    server = _Server(catalog, gen, settings)
    # The docs pages load scripts from a CDN: off.
    app = FastAPI(title="lorakit", docs_url=None, redoc_url=None, dependencies=[Depends(server.loopback_only)])
    install_error_handlers(app)
    authorized = [Depends(server.authorize)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("lorakit.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "models": catalog.names()}

    @app.get("/v1/models", dependencies=authorized)
    def models() -> dict:
        return {"object": "list", "data": [server.model_card(n) for n in catalog.names()]}

    @app.get("/v1/models/{name}", dependencies=authorized)
    def model(name: str) -> dict:
        server.lookup(name)
        return server.model_card(name)

    # The endpoints are async so a waiting request can see its client leave; the tokenizing
    # and admitting run on a worker thread, off the event loop.
    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat_completions(req: ChatRequest, request: Request):
        def start() -> _Job:
            choice = server.lookup(req.model)
            ids = chat_prompt_ids(choice, req.conversation())
            return server.admit(choice, ids, server.plan(ids, req, req.requested_tokens()), req.stop, chat=True)

        job = await anyio.to_thread.run_sync(start)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model}
        return await server.respond(
            job, req, request, head, ("chat.completion.chunk", "chat.completion"),
            # The first chunk announces the role; the closing one has an empty delta.
            lambda piece: {"delta": {"role": "assistant", "content": ""} if piece is None
                           else ({"content": piece} if piece else {})},
            lambda answer: {"message": {"role": "assistant", "content": answer.text}},
        )

    @app.post("/v1/completions", dependencies=authorized)
    async def completions(req: CompletionRequest, request: Request):
        def start() -> _Job:
            choice = server.lookup(req.model)
            # Raw text, as a language model reads it: the tokenizer's own special tokens, no template.
            ids = choice.tokenizer(req.prompt)["input_ids"]
            return server.admit(choice, ids, server.plan(ids, req, req.requested_tokens()), req.stop, chat=False)

        job = await anyio.to_thread.run_sync(start)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model}
        return await server.respond(
            job, req, request, head, ("text_completion", "text_completion"),
            lambda piece: {"text": piece or "", "logprobs": None},
            lambda answer: {"text": answer.text, "logprobs": None},
        )

    return app


def serve(catalog: Catalog, gen: GenerationConfig, settings: ServeConfig) -> None:
    """Run until Ctrl-C."""
    import uvicorn

    uvicorn.run(create_app(catalog, gen, settings), host=settings.host, port=settings.port, log_level="info")
