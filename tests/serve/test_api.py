"""The HTTP API on a tiny model with two adapters: routing by name, raw completions, stop strings,
the pending-request bound, and the prompt tokens the trainer would have built.

One server for the module, on a free loopback port, with max_pending=1 so the 429 path can be
reached deterministically. The tests that need a real model are in test_openai.py.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import httpx2 as httpx
import pytest

from lorakit.config import GenerationConfig
from lorakit.infer.catalog import open_catalog
from lorakit.infer.stream import TextStream
from lorakit.serve.app import ServeConfig, chat_prompt_ids, create_app
from tests.infer.runs import make_tiny_catalog, make_tiny_run, trainer_prompt_ids
from lorakit.serve.in_process import running

GEN = GenerationConfig(max_new_tokens=8, context_length=96)
HI = [{"role": "user", "content": "What is two plus two?"}]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    catalog, _, _ = make_tiny_catalog(tmp_path_factory.mktemp("api"))
    return catalog


@pytest.fixture(scope="module")
def server(catalog):
    with running(create_app(catalog, GEN, ServeConfig(max_pending=1))) as url:
        yield url, catalog


KEY = "sk-test"


@pytest.fixture(scope="module")
def keyed(catalog):
    """The same models behind an API key, with room for several requests at once."""
    with running(create_app(catalog, GEN, ServeConfig(max_pending=4, api_key=KEY))) as url:
        yield url


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
    # The API key typed into the page stays with the tab (test_openai.py checks it in a browser).
    assert "sessionStorage" in page.text and "localStorage" not in page.text


def test_each_model_name_answers_with_its_own_adapter(server):
    url, catalog = server
    answers = {}
    for name in ["extra", "base", "run"]:
        choice = catalog.get(name)
        ids = chat_prompt_ids(choice, HI)
        alone = TextStream(catalog.model, choice.tokenizer, ids, GEN, choice.template.end_token_ids,
                           hold=lambda n=name: catalog.hold(n)).read()
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
        model_taken.enter_context(catalog.hold("base"))  # an admitted request now waits for the model
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60,
                          json={"model": "run", "messages": HI, "stream": True}) as waiting:
            lines = waiting.iter_lines()
            assert next(lines).startswith("data: ")  # admitted: it holds the only place
            busy = chat(url, model="run")
            assert busy.status_code == 429
            assert busy.json()["error"]["code"] == "server_busy"
            assert busy.headers["Retry-After"] == "1"
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
        # Every number has a range: none of these may reach generation (2**70 was a 500 there).
        ({"model": "run", "messages": HI, "seed": 2**70}, "seed"),
        ({"model": "run", "messages": HI, "seed": 2**32}, "seed"),  # numpy's range, as the config's seeds
        ({"model": "run", "messages": HI, "seed": -1}, "seed"),
        ({"model": "run", "messages": HI, "max_tokens": 2**70}, "max_tokens"),
        ({"model": "run", "messages": HI, "max_tokens": 0}, "max_tokens"),
        ({"model": "run", "messages": HI, "max_completion_tokens": 2**70}, "max_completion_tokens"),
        ({"model": "run", "messages": HI, "top_k": 2**40}, "top_k"),
        ({"model": "run", "messages": HI, "top_k": -1}, "top_k"),
        ({"model": "run", "messages": HI, "top_p": 0}, "top_p"),
        ({"model": "run", "messages": HI, "min_p": 1.5}, "min_p"),
        ({"model": "run", "messages": HI, "repetition_penalty": 1e9}, "repetition_penalty"),
        ({"model": "run", "messages": HI, "temperature": float("nan")}, "temperature"),
        ({"model": "run", "messages": HI, "repetition_penalty": float("inf")}, "repetition_penalty"),
        # Types are strict: each of these was converted (to 5, 1.0, True) and answered.
        ({"model": "run", "messages": HI, "max_tokens": "5"}, "max_tokens"),
        ({"model": "run", "messages": HI, "max_tokens": 5.0}, "max_tokens"),
        ({"model": "run", "messages": HI, "temperature": True}, "temperature"),
        ({"model": "run", "messages": HI, "top_p": "0.5"}, "top_p"),
        ({"model": "run", "messages": HI, "stream": "true"}, "stream"),
        ({"model": "run", "messages": HI, "seed": "7"}, "seed"),
    ]
    for body, param in cases:
        # Python's json writes NaN and Infinity (as JavaScript does), which the client's encoder refuses.
        response = httpx.post(f"{url}/v1/chat/completions", content=json.dumps(body),
                              headers={"Content-Type": "application/json"})
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"], body
    assert chat(url, model="run").status_code == 200
    seeded = chat(url, model="run", seed=2**32 - 1, temperature=1)  # the widest seed; an integer fills a float
    assert seeded.status_code == 200, seeded.text


def test_without_a_key_only_loopback_names_are_served(server):
    url, _ = server
    port = url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert httpx.get(f"{url}/v1/models", headers={"Host": host}).status_code == 200, host
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", "10.0.0.5"):
        refused = httpx.get(f"{url}/v1/models", headers={"Host": host})
        assert refused.status_code == 403, host
        assert refused.json()["error"]["code"] == "host_not_allowed" and "--api-key" in refused.json()["error"]["message"]
    assert httpx.get(f"{url}/", headers={"Host": "evil.example"}).status_code == 403  # the page too


def test_with_a_key_any_host_is_served_but_only_a_bearer_key_counts(keyed):
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{keyed}/v1/models", headers={**bearer, "Host": "my-server.lan:8000"}).status_code == 200
    assert httpx.get(f"{keyed}/v1/models", headers={"Authorization": KEY}).status_code == 401  # no scheme
    assert httpx.get(f"{keyed}/v1/models", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert httpx.get(f"{keyed}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{keyed}/v1/models").status_code == 401


def test_an_abandoned_plain_request_stops_generating(keyed, catalog):
    """A client that gives up on a non-streamed request frees the model for the next one.

    Each forward pass is slowed to 40 ms, so the 80-token answer takes over 3 s. The next
    request (2 tokens) must be answered within 1.5 s of the first client giving up: the
    server notices within DISCONNECT_POLL_S (0.1 s), the generation stops after its current
    token, and the short answer needs 3 passes.
    """
    bearer = {"Authorization": f"Bearer {KEY}"}
    long_body = {"model": "base", "prompt": "The quick brown fox", "max_tokens": 80, "temperature": 0}
    passes = []

    def slow(module, args):
        passes.append(time.monotonic())
        time.sleep(0.04)

    hook = catalog.model.get_input_embeddings().register_forward_pre_hook(slow)  # once per forward pass
    try:
        started = time.monotonic()
        whole = httpx.post(f"{keyed}/v1/completions", json=long_body, headers=bearer, timeout=60).json()
        assert whole["usage"]["completion_tokens"] == 80 and time.monotonic() - started > 3  # long, really
        passes.clear()

        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{keyed}/v1/completions", json=long_body, headers=bearer, timeout=0.5)
        gave_up = time.monotonic()
        short = httpx.post(f"{keyed}/v1/completions", headers=bearer, timeout=60,
                           json={"model": "base", "prompt": "Hello", "max_tokens": 2})
        waited = time.monotonic() - gave_up
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 2
        assert waited < 1.5, f"the next request waited {waited:.2f} s: the abandoned generation went on"
        time.sleep(0.5)
        count = len(passes)
        time.sleep(0.3)
        assert len(passes) == count, "the model is still generating for nobody"
        assert count < 40, count  # the abandoned answer stopped far short of its 80 tokens
    finally:
        hook.remove()


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
