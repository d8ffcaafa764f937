"""The terminal chat: context kept in the window, system prompt, speed reports, adapter switching."""

from __future__ import annotations

import io

import pytest

from lorakit.config import GenerationConfig
from lorakit.infer.chat import chat_loop, fit_history
from tests.infer.runs import make_tiny_catalog


def turn(role: str, n: int) -> dict:
    return {"role": role, "content": f"{role} {n}"}


def test_fit_history_drops_oldest_exchanges_and_keeps_the_system_prompt():
    history = [{"role": "system", "content": "be brief"}]
    for n in range(3):
        history += [turn("user", n), turn("assistant", n)]
    history.append(turn("user", 3))
    count = len  # ten tokens a turn would do as well; one "token" per turn keeps it readable

    kept, dropped = fit_history(history, count, budget=4)
    assert kept == [history[0], turn("user", 2), turn("assistant", 2), turn("user", 3)]
    assert dropped == 4

    kept, dropped = fit_history(history, count, budget=100)
    assert kept == history and dropped == 0

    # Never below the last turn: the caller decides what to do with a message too long alone.
    kept, dropped = fit_history(history, count, budget=1)
    assert kept == [history[0], turn("user", 3)] and dropped == 6


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return make_tiny_catalog(tmp_path_factory.mktemp("chat"))[0]


def talk(catalog, lines: list[str], **kwargs) -> str:
    out = io.StringIO()
    chat_loop(catalog, stdin=io.StringIO("".join(line + "\n" for line in lines)), stdout=out, **kwargs)
    return out.getvalue()


def test_chat_switches_adapter_and_reports_speed(catalog):
    gen = GenerationConfig(max_new_tokens=4)
    text = talk(catalog, ["/adapter", "/adapter nope", "/adapter extra", "/stats", "hello", "/exit"], gen=gen)
    assert "(models: base, run, extra; talking to run)" in text
    assert "(no model named 'nope'" in text
    assert "(now talking to extra" in text
    assert "(speed reports on)" in text
    assert "tokens/s; prompt" in text


def test_chat_drops_the_oldest_turns_when_the_context_is_full(catalog):
    # 64 tokens of context, 8 for the answer: a few exchanges fill the rest.
    gen = GenerationConfig(max_new_tokens=8, context_length=64)
    text = talk(catalog, ["What is two plus two?"] * 4 + ["/exit"], gen=gen, system_prompt="Be brief.")
    assert "oldest turns to stay within the 64-token context)" in text
    assert text.count(">>> ") == 5  # every message was answered


def test_chat_refuses_a_message_that_cannot_fit(catalog):
    gen = GenerationConfig(max_new_tokens=8, context_length=32)
    text = talk(catalog, ["the quick brown fox " * 20, "hi", "/exit"], gen=gen, stats=True)
    assert "Not sent." in text
    assert text.count("tokens/s") == 1  # "hi" still gets its answer
