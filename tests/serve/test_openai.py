"""The embedded SmolLM2 behind the server, driven by the official ``openai`` client and a browser.

One server for the module on a free loopback port, with an API key, serving the base and a
LoRA adapter whose B matrices are zero (peft's default init): it answers as the base does,
which is enough to pick it by name in the API and in the web page.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest

from lorakit.config import GenerationConfig
from lorakit.infer.catalog import open_catalog
from lorakit.serve.app import ServeConfig, chat_prompt_ids, create_app
from tests.browser import chromium, needs_chromium
from tests.conftest import needs_embedded
from tests.infer.runs import trainer_prompt_ids
from lorakit.serve.in_process import running

openai = pytest.importorskip("openai", reason="the openai client is a test dependency: pip install -e '.[test]'")

pytestmark = [needs_embedded, pytest.mark.slow]

KEY = "test-key-123"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
QUESTIONS = [
    "What is the capital of France?",
    "What is the capital of Italy?",
    "Name a primary color.",
    "What is 2 plus 3?",
    "Say hello in Spanish.",
    "What animal says moo?",
    "What color is the sky on a clear day?",
    "How many days are in a week?",
]


def _zero_adapter(cache: Path, folder: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    from lorakit.config import ModelConfig
    from lorakit.model.loader import load_model, resolve_model_folder

    model_cfg = ModelConfig(cache_dir=cache)
    model = load_model(resolve_model_folder(model_cfg), model_cfg.dtype)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])  # B = 0: the adapter changes nothing yet
    get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(embedded_cache, tmp_path_factory):
    adapter = _zero_adapter(embedded_cache, tmp_path_factory.mktemp("zero") / "adapter")
    catalog = open_catalog("smollm2-135m-instruct", embedded_cache, [("smol-zero", adapter)])
    app = create_app(catalog, GenerationConfig(max_new_tokens=24), ServeConfig(api_key=KEY))
    with running(app) as url:
        yield url, catalog


def client(url: str, key: str = KEY) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def test_chat_completion_and_a_streamed_one(server):
    url, _ = server
    api = client(url)
    assert [m.id for m in api.models.list()] == ["base", "smol-zero"]
    reply = api.chat.completions.create(model="smol-zero", messages=FRANCE, max_tokens=20, temperature=0)
    text = reply.choices[0].message.content
    assert "Paris" in text
    assert reply.usage.completion_tokens > 0 and reply.usage.total_tokens > reply.usage.prompt_tokens

    chunks = list(api.chat.completions.create(model="smol-zero", messages=FRANCE, max_tokens=20, temperature=0,
                                              stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1, "the answer came in one piece: not streamed"
    assert "".join(pieces) == text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server):
    url, _ = server
    api = client(url)
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    bad_json = httpx.post(f"{url}/v1/chat/completions", headers=auth, content=b'{"model": "base", "messages": [')
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["code"] == "invalid_json"

    missing = httpx.post(f"{url}/v1/chat/completions", headers=auth, json={"model": "base"})
    assert missing.status_code == 400
    assert missing.json()["error"] == {"message": "missing required parameter: 'messages'",
                                       "type": "invalid_request_error", "param": "messages",
                                       "code": "missing_required_parameter"}

    with pytest.raises(openai.NotFoundError) as unknown:
        api.chat.completions.create(model="gpt-4", messages=FRANCE)
    assert unknown.value.status_code == 404 and unknown.value.code == "model_not_found"
    assert "base, smol-zero" in unknown.value.message

    long_prompt = [{"role": "user", "content": "word " * 9000}]  # over SmolLM2's 8192 positions
    with pytest.raises(openai.BadRequestError) as too_long:
        api.chat.completions.create(model="base", messages=long_prompt)
    assert too_long.value.code == "context_length_exceeded" and "8192" in too_long.value.message
    with pytest.raises(openai.BadRequestError) as too_many:
        api.chat.completions.create(model="base", messages=FRANCE, max_tokens=9000)
    assert too_many.value.code == "context_length_exceeded"

    with pytest.raises(openai.AuthenticationError) as wrong_key:
        client(url, key="wrong").chat.completions.create(model="base", messages=FRANCE)
    assert wrong_key.value.status_code == 401 and wrong_key.value.code == "invalid_api_key"
    assert httpx.get(f"{url}/v1/models").status_code == 401  # no key at all

    still = api.chat.completions.create(model="base", messages=FRANCE, max_tokens=8)
    assert still.choices[0].message.content


def test_strict_request_types_take_what_the_client_sends(server):
    url, _ = server
    api = client(url)
    # The official client sends JSON's own types for every field it knows: all accepted (0 for a float too).
    sampled = api.chat.completions.create(
        model="base", messages=FRANCE, max_completion_tokens=8, temperature=0.7, top_p=0.9, seed=5, stop=["\n\n"],
        n=1, user="test", presence_penalty=0, frequency_penalty=0, stream_options=None,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert sampled.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as typed:  # was read as 5
        api.chat.completions.create(model="base", messages=FRANCE, extra_body={"max_tokens": "5"})
    assert typed.value.param == "max_tokens" and typed.value.code == "invalid_value"


def test_eight_concurrent_clients_each_get_their_own_answer(server):
    url, _ = server

    def ask(question: str) -> str:
        reply = client(url).chat.completions.create(
            model="base", messages=[{"role": "user", "content": question}], max_tokens=8, temperature=0
        )
        return reply.choices[0].message.content

    alone = [ask(q) for q in QUESTIONS]
    assert len(set(alone)) == len(QUESTIONS)  # different prompts, different answers: a mix-up would show
    with ThreadPoolExecutor(max_workers=len(QUESTIONS)) as pool:
        together = list(pool.map(ask, QUESTIONS))
    assert together == alone


def test_server_prompt_tokens_equal_the_trainers(server):
    """SmolLM2's own template (which adds a default system prompt) from training to serving."""
    url, catalog = server
    choice = catalog.get("smol-zero")
    conversation = [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "It is four."},
        {"role": "user", "content": "And three plus three?"},
    ]
    expected = trainer_prompt_ids(choice, conversation)
    assert chat_prompt_ids(choice, conversation) == expected
    reply = client(url).chat.completions.create(model="smol-zero", messages=conversation, max_tokens=1)
    assert reply.usage.prompt_tokens == len(expected)


@needs_chromium
def test_the_web_page_chats_with_a_streamed_answer(server):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, _ = server
    with chromium() as browser:
        browser.get(url + "/")
        browser.find_element("id", "api-key").send_keys(KEY)
        browser.execute_script("document.getElementById('api-key').dispatchEvent(new Event('change'))")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element("id", "model").get_attribute("data-loaded") == "true")
        # The key is the tab's own (sessionStorage), not kept on disk for every later visit (localStorage).
        stored = browser.execute_script("return [sessionStorage.getItem('lorakit-api-key'), "
                                        "localStorage.getItem('lorakit-api-key')]")
        assert stored == [KEY, None]
        picker = Select(browser.find_element("id", "model"))
        assert [o.text for o in picker.options] == ["base", "smol-zero"]
        picker.select_by_visible_text("smol-zero")
        browser.find_element("id", "max-tokens").clear()
        browser.find_element("id", "max-tokens").send_keys("20")
        browser.find_element("id", "input").send_keys("What is the capital of France?")
        browser.find_element("id", "send").click()
        started = time.monotonic()
        wait.until(lambda b: b.find_elements("css selector", ".msg.assistant[data-done='true'], .msg.error"))
        assert not browser.find_elements("css selector", ".msg.error"), browser.find_element("id", "log").text
        answer = browser.find_element("css selector", ".msg.assistant")
        assert "Paris" in answer.text
        assert int(answer.get_attribute("data-chunks")) > 1, "the page got the answer in one piece"
        assert "tokens/s" in browser.find_element("css selector", ".note").text
        assert time.monotonic() - started < 60
