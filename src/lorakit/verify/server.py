"""The server answers as ``generate`` does: the OpenAI-compatible app, started in this process on a
loopback port, asked over HTTP for greedy chat completions, streamed and not, of a few held-out prompts.

Both sides share the loaded model (the run's catalog), so a difference is the server's own: how it
reads the request's messages, renders them, stops and decodes.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

from lorakit.serve.app import ServeConfig, create_app
from lorakit.serve.in_process import running
from lorakit.templates import Conversation
from lorakit.verify.report import FAIL, PASS, Check
from lorakit.verify.subject import Subject

PROMPTS = 3  # a few: each is answered three times (generate, the server plain and streamed)
TIMEOUT_S = 600


def _post(url: str, body: dict) -> urllib.request.Request:
    return urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})


def _events(response) -> Iterator[dict]:
    for raw in response:
        line = raw.decode("utf-8").strip()
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: "):])


def ask(url: str, model: str, conversation: Conversation, max_tokens: int, stream: bool) -> tuple[str, str]:
    """(answer text, finish reason) of one greedy chat completion."""
    body = {"model": model, "messages": conversation, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    with urllib.request.urlopen(_post(f"{url}/v1/chat/completions", body), timeout=TIMEOUT_S) as response:
        if not stream:
            choice = json.loads(response.read())["choices"][0]
            return choice["message"]["content"], choice["finish_reason"]
        text, reason = "", ""
        for event in _events(response):
            for choice in event.get("choices", []):
                text += choice["delta"].get("content", "")
                reason = choice.get("finish_reason") or reason
        return text, reason


def check_server(subject: Subject) -> Check:
    prompts = subject.held.prompts[:PROMPTS]
    limit = subject.limit()
    want = subject.answer(subject.consumer_prompts()[:PROMPTS])  # as `lorakit generate RUN` answers
    catalog = subject.session.catalog
    app = create_app(catalog, subject.greedy(), ServeConfig())
    differ: list[str] = []
    with running(app) as url:
        for sample, conversation, answer in zip(subject.held.samples, prompts, want):
            for stream in (False, True):
                text, reason = ask(url, catalog.default, conversation, limit, stream)
                if (text.strip(), reason) != (answer.text, answer.finish_reason):
                    how = "streamed" if stream else "plain"
                    differ.append(f"{sample.origin} ({how}): server {text.strip()[:80]!r} ({reason}), generate "
                                  f"{answer.text[:80]!r} ({answer.finish_reason})")
    n = len(prompts)
    details = {"prompts": n, "differing": differ[:5]}
    if differ:
        return Check("server", FAIL, f"{len(differ)} of {2 * n} server answers differ from generate's: {differ[0]}",
                     details=details)
    return Check("server", PASS, f"the server's greedy answers, plain and streamed, equal generate's for {n} prompts",
                 details=details)
