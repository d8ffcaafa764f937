"""Streamed answers: the same tokens as batch generation, stop strings cut exactly, the hold released."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
from transformers import AutoModelForCausalLM

from lorakit.config import GenerationConfig
from lorakit.templates import resolve_template
from lorakit.infer.generate import generate_ids, prompt_ids
from lorakit.infer.stream import TextStream, held_back
from lorakit.model.loader import load_tokenizer
from tests.conftest import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model_dir(tmp_path_factory.mktemp("stream") / "m", seed=3)
    tokenizer = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    template = resolve_template(tokenizer, "auto")
    ids = prompt_ids(tokenizer, template, [{"role": "user", "content": "What is two plus two?"}])
    return model, tokenizer, template, ids


def test_held_back_is_the_longest_suffix_that_could_start_a_stop_string():
    assert held_back("hello wor", ["world"]) == 3
    assert held_back("hello", ["world"]) == 0
    assert held_back("a###", ["####", "#x"]) == 3
    assert held_back("abc", []) == 0
    assert held_back("xab", ["abc"]) == 2
    assert held_back("abc", ["abc"]) == 0  # a whole stop string is found by the caller, not held back


def test_stream_gives_the_tokens_batch_generation_gives(tiny):
    model, tokenizer, template, ids = tiny
    gen = GenerationConfig(max_new_tokens=16)
    stream = TextStream(model, tokenizer, ids, gen, template.end_token_ids)
    pieces = list(stream)
    alone = generate_ids(model, tokenizer, [ids], gen, template.end_token_ids)[0]
    assert stream.answer.token_ids == alone.token_ids
    assert "".join(pieces) == stream.answer.text
    assert stream.answer.text == tokenizer.decode(alone.token_ids, skip_special_tokens=True).lstrip()
    assert stream.answer.finish_reason == alone.finish_reason


def test_stop_string_cuts_the_answer_before_it(tiny):
    model, tokenizer, template, ids = tiny
    gen = GenerationConfig(max_new_tokens=24)
    full = TextStream(model, tokenizer, ids, gen, template.end_token_ids).read().text
    # A stop string from the middle of the answer: the first ASCII letter pair in it.
    start = next(k for k in range(2, len(full) - 1) if full[k : k + 2].isascii() and full[k : k + 2].isalnum())
    stop = full[start : start + 2]
    stream = TextStream(model, tokenizer, ids, gen, template.end_token_ids, stop_strings=[stop, "never-there"])
    pieces = list(stream)
    assert "".join(pieces) == full[: full.find(stop)]
    assert stream.answer.text == full[: full.find(stop)]
    assert stream.answer.finish_reason == "stop"
    assert not any(stop in piece for piece in pieces)


def test_the_hold_is_kept_while_generating_and_released_after(tiny):
    model, tokenizer, template, ids = tiny
    lock = threading.Lock()
    events: list[str] = []

    @contextmanager
    def hold():
        with lock:
            events.append("enter")
            yield
            events.append("exit")

    stream = TextStream(model, tokenizer, ids, GenerationConfig(max_new_tokens=8), template.end_token_ids, hold=hold)
    stream.read()
    assert events == ["enter", "exit"] and not lock.locked()


def test_cancel_stops_generation_early(tiny):
    model, tokenizer, template, ids = tiny
    gen = GenerationConfig(max_new_tokens=60)
    assert TextStream(model, tokenizer, ids, gen, frozenset()).read().new_tokens == 60
    gate = threading.Event()

    @contextmanager
    def wait_for_cancel():
        gate.wait(timeout=30)
        yield

    stream = TextStream(model, tokenizer, ids, gen, frozenset(), hold=wait_for_cancel)
    stream.cancel()  # a reader that leaves before the first token
    gate.set()
    assert stream.read().new_tokens == 1  # generate checks the criteria after each token


def test_an_error_while_generating_reaches_the_reader(tiny):
    model, tokenizer, template, ids = tiny

    @contextmanager
    def broken():
        raise RuntimeError("the model went away")
        yield  # pragma: no cover

    stream = TextStream(model, tokenizer, ids, GenerationConfig(max_new_tokens=4), template.end_token_ids, hold=broken)
    with pytest.raises(RuntimeError, match="the model went away"):
        stream.read()


def test_a_reader_that_stops_early_ends_the_generation(tiny):
    model, tokenizer, template, ids = tiny
    released = threading.Event()

    @contextmanager
    def hold():
        yield
        released.set()

    stream = TextStream(model, tokenizer, ids, GenerationConfig(max_new_tokens=2000), frozenset(), hold=hold)
    pieces = iter(stream)
    next(pieces)
    pieces.close()  # as a server does when its client disconnects
    assert released.wait(timeout=120)
    generated = len(stream._new_ids)  # set before the hold is released
    assert 0 < generated < 2000, "the worker kept generating after the reader left"
