"""A terminal chat: multi-turn, streamed, kept inside the model's context window.

It reads plain lines from stdin, so it works in a terminal and when driven by a pipe.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from lorakit.config import GenerationConfig
from lorakit.templates import Conversation
from lorakit.infer.catalog import Catalog
from lorakit.infer.generate import GenerationError, context_length, prompt_ids
from lorakit.infer.stream import TextStream

HELP = (
    "Type a message. /reset starts a new conversation, /stats toggles speed reports, "
    "/adapter NAME switches model (/adapter alone lists them), /exit quits."
)


def fit_history(
    history: Conversation, count_tokens: Callable[[Conversation], int], budget: int
) -> tuple[Conversation, int]:
    """Drop the oldest turns (never the system prompt, never the last turn) until the prompt fits.

    A user turn goes together with the answer that followed it, so what remains still
    alternates as the template expects. Returns the kept history and how many turns went.
    """
    system = history[:1] if history and history[0]["role"] == "system" else []
    turns = history[len(system) :]
    dropped = 0
    while len(turns) > 1 and count_tokens(system + turns) > budget:
        pair = len(turns) > 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant"
        cut = 2 if pair else 1
        turns = turns[cut:]
        dropped += cut
    return system + turns, dropped


def _switch(catalog: Catalog, wanted: str, current: str, say: Callable[[str], None]) -> str:
    """``/adapter NAME``: the model to talk to from now on (``/adapter`` alone lists them)."""
    if not wanted:
        say(f"(models: {', '.join(catalog.names())}; talking to {current})")
    elif wanted not in catalog.choices:
        say(f"(no model named {wanted!r}; models: {', '.join(catalog.names())})")
    else:
        say(f"(now talking to {wanted}; the conversation so far is kept)")
        return wanted
    return current


def chat_loop(
    catalog: Catalog,
    gen: GenerationConfig,
    system_prompt: str | None = None,
    stats: bool = False,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
) -> int:
    """Run until /exit or end of input; return the number of answers given."""
    history: Conversation = []
    current = catalog.default
    budget = context_length(catalog.model, gen) - gen.max_new_tokens
    if budget <= 0:
        raise GenerationError(
            f"max_new_tokens ({gen.max_new_tokens}) leaves no room for a prompt in a "
            f"{context_length(catalog.model, gen)}-token context; lower it"
        )

    def say(text: str) -> None:
        print(text, file=stdout, flush=True)

    def reset() -> None:
        history.clear()
        if system_prompt:
            history.append({"role": "system", "content": system_prompt})

    reset()
    say(HELP)
    if len(catalog.choices) > 1:
        say(f"(talking to {current}; models: {', '.join(catalog.names())})")
    answers = 0
    while True:
        print("\n>>> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # end of input
            print(file=stdout)
            return answers
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return answers
        if text == "/reset":
            reset()
            say("(conversation cleared)")
            continue
        if text == "/stats":
            stats = not stats
            say(f"(speed reports {'on' if stats else 'off'})")
            continue
        if text == "/adapter" or text.startswith("/adapter "):
            current = _switch(catalog, text[len("/adapter") :].strip(), current, say)
            continue
        history.append({"role": "user", "content": text})
        choice = catalog.get(current)
        fitted, dropped = fit_history(
            history, lambda conv: len(prompt_ids(choice.tokenizer, choice.template, conv)), budget
        )
        ids = prompt_ids(choice.tokenizer, choice.template, fitted)
        if len(ids) > budget:
            history.pop()
            say(f"(that message is {len(ids)} tokens with the system prompt; at most {budget} fit. Not sent.)")
            continue
        if dropped:
            history[:] = fitted
            say(f"(dropped the {dropped} oldest turns to stay within the {budget + gen.max_new_tokens}-token context)")
        started = time.perf_counter()
        stream = TextStream(
            catalog.model, choice.tokenizer, ids, gen, choice.template.end_token_ids,
            hold=lambda name=current: catalog.hold(name),
        )
        for piece in stream:
            print(piece, end="", file=stdout, flush=True)
        print(file=stdout, flush=True)
        answer = stream.answer
        assert answer is not None
        seconds = time.perf_counter() - started
        if stats:
            rate = answer.new_tokens / seconds if seconds > 0 else 0.0
            say(f"[{answer.new_tokens} tokens in {seconds:.2f} s, {rate:.1f} tokens/s; prompt {answer.prompt_tokens} tokens]")
        history.append({"role": "assistant", "content": answer.text})
        answers += 1
