"""A terminal chat: multi-turn, streamed, with /reset and /exit.

It reads plain lines from stdin, so it works in a terminal and when driven by a pipe.
"""

from __future__ import annotations

import sys
from typing import TextIO

from lorakit.config import GenerationConfig
from lorakit.data.shapes import Conversation
from lorakit.infer.generate import stream_answer
from lorakit.infer.session import Session

HELP = "Type a message. /reset starts a new conversation, /exit quits."
ADAPTER_HELP = "/adapter NAME switches adapter (the conversation goes on): "


def _switch(session: Session, name: str, stdout: TextIO) -> None:
    if not name:
        print(f"(adapters: {', '.join(session.adapters) or 'one'})", file=stdout, flush=True)
        return
    try:
        session.use(name)
    except ValueError as err:
        print(f"({err})", file=stdout, flush=True)
        return
    print(f"(now answering with {name})", file=stdout, flush=True)


def chat_loop(
    session: Session,
    gen: GenerationConfig,
    system_prompt: str | None = None,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
) -> int:
    """Run until /exit or end of input; return the number of answers given."""
    history: Conversation = []

    def reset() -> None:
        history.clear()
        if system_prompt:
            history.append({"role": "system", "content": system_prompt})

    reset()
    print(HELP, file=stdout, flush=True)
    if session.adapters:
        print(ADAPTER_HELP + ", ".join(session.adapters), file=stdout, flush=True)
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
            print("(conversation cleared)", file=stdout, flush=True)
            continue
        if text.startswith("/adapter"):
            _switch(session, text.removeprefix("/adapter").strip(), stdout)
            continue
        history.append({"role": "user", "content": text})
        answer = stream_answer(session.model, session.tokenizer, session.template, history, gen)
        history.append({"role": "assistant", "content": answer.text})
        answers += 1
