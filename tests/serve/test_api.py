"""The HTTP API on a tiny model with two adapters: routing by name, raw completions, stop strings,
the pending-request bound, and the prompt tokens the trainer would have built.

One server for the module, on a free loopback port, with max_pending=1 so the 429 path can be
reached deterministically. The tests that need a real model are in test_openai.py.
"""

from __future__ import annotations

import json
from contextlib import ExitStack

import httpx2 as httpx
import pytest

from lorakit.config import GenerationConfig, ServeConfig
from lorakit.infer.catalog import open_catalog
from lorakit.infer.stream import TextStream
from lorakit.serve.app import chat_prompt_ids, create_app
from tests.infer.runs import make_tiny_catalog, make_tiny_run, trainer_prompt_ids
from tests.serve.server import running

GEN = GenerationConfig(max_new_tokens=8, context_length=96)
HI = [{"role": "user", "content": "What is two plus two?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    catalog, _, _ = make_tiny_catalog(tmp_path_factory.mktemp("api"))
    with running(create_app(catalog, GEN, ServeConfig(max_pending=1))) as url:
        yield url, catalog


def chat(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"messages": HI, **body}, timeout=60)


def events(response: httpx.Response) -> list[dict | str]:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_models_health_and_the_page(server):
    url, _ = server
    assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["base", "run", "extra"]
    assert httpx.get(f"{url}/v1/models/extra").json()["id"] == "extra"
    assert httpx.get(f"{url}/v1/models/nope").status_code == 404
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="model"' in page.text and "/v1/chat/completions" in page.text


def test_each_model_name_answers_with_its_own_adapter(server):
    url, catalog = server
    answers = {}
    for name in ["extra", "base", "run"]:
        choice = catalog.get(name)
        ids = chat_prompt_ids(choice, HI)
        alone = TextStream(catalog.model, choice.tokenizer, ids, GEN, choice.template.end_token_ids,
                           hold=lambda n=name: catalog.use(n)).read()
        body = chat(url, model=name).json()
        assert body["choices"][0]["message"]["content"] == alone.text, name
        assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": alone.new_tokens,
                                 "total_tokens": len(ids) + alone.new_tokens}
        answers[name] = alone.token_ids
    assert len({tuple(a) for a in answers.values()}) == 3  # the adapters really answer differently


def test_streamed_chunks_add_up_to_the_answer(server):
    url, _ = server
    whole = chat(url, model="run").json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60,
                      json={"model": "run", "messages": HI, "stream": True,
                            "stream_options": {"include_usage": True}}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        got = events(response)
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert got[-1] == "[DONE]"
    assert got[-2]["usage"]["completion_tokens"] > 0 and got[-2]["choices"] == []
    assert got[-3]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in got[1:-3])
    assert text == whole


def test_raw_completion_uses_no_template(server):
    url, catalog = server
    prompt = "The quick brown fox"
    body = httpx.post(f"{url}/v1/completions", json={"model": "base", "prompt": prompt, "max_tokens": 5}).json()
    assert body["object"] == "text_completion"
    assert body["usage"]["prompt_tokens"] == len(catalog.get("base").tokenizer(prompt)["input_ids"])
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    with httpx.stream("POST", f"{url}/v1/completions", timeout=60,
                      json={"model": "base", "prompt": [prompt], "max_tokens": 5, "stream": True}) as response:
        got = events(response)
    assert "".join(c["choices"][0]["text"] for c in got[:-1]) == body["choices"][0]["text"]


def test_stop_strings_end_the_answer_before_them(server):
    url, _ = server
    full = chat(url, model="extra", max_tokens=20).json()["choices"][0]["message"]["content"]
    start = next(k for k in range(2, len(full) - 1) if full[k : k + 2].isascii() and full[k : k + 2].isalnum())
    stop = full[start : start + 2]
    cut = chat(url, model="extra", max_tokens=20, stop=[stop]).json()["choices"][0]
    assert cut["message"]["content"] == full[: full.find(stop)]
    assert cut["finish_reason"] == "stop"


def test_a_busy_server_refuses_with_429_and_recovers(server):
    url, catalog = server
    with ExitStack() as model_taken:
        model_taken.enter_context(catalog.use("base"))  # an admitted request now waits for the model
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60,
                          json={"model": "run", "messages": HI, "stream": True}) as waiting:
            lines = waiting.iter_lines()
            assert next(lines).startswith("data: ")  # admitted: it holds the only place
            busy = chat(url, model="run")
            assert busy.status_code == 429
            assert busy.json()["error"]["code"] == "server_busy"
            model_taken.close()
            assert [line for line in lines if line][-1] == "data: [DONE]"  # it was answered once the model was free
    assert chat(url, model="run").status_code == 200


def test_validation_errors_name_the_field(server):
    url, _ = server
    cases = [
        ({"model": "run", "messages": []}, "messages"),
        ({"model": "run", "messages": HI, "temperature": 5}, "temperature"),
        ({"model": "run", "messages": HI, "n": 2}, "n"),
        ({"model": "run", "messages": HI, "tools": []}, "tools"),
        ({"model": "run", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"model": "run", "messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "run", "messages": HI, "frequency_penalty": 0.5}, "frequency_penalty"),
        ({"model": "run", "messages": HI, "max_tokens": 200}, "messages"),  # 200 > the 96-token context
    ]
    for body, param in cases:
        response = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"], body
    assert chat(url, model="run").status_code == 200


@pytest.mark.parametrize("family", ["chatml", "llama-3"])
def test_server_prompt_tokens_equal_the_trainers(tmp_path, family):
    """One template from training to serving: the tokens before the last answer are the same."""
    run, _ = make_tiny_run(tmp_path, family)
    catalog = open_catalog(str(run), tmp_path / "cache")
    choice = catalog.get("run")
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "It is four."},
        {"role": "user", "content": "Say the city of Maria."},
    ]
    expected = trainer_prompt_ids(choice, conversation)
    assert chat_prompt_ids(choice, conversation) == expected
    with running(create_app(catalog, GEN.model_copy(update={"max_new_tokens": 2}), ServeConfig())) as url:
        body = httpx.post(f"{url}/v1/chat/completions", json={"model": "run", "messages": conversation}).json()
    assert body["usage"]["prompt_tokens"] == len(expected)
