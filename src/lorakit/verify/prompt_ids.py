"""Every prompt path builds training's tokens: chat, generate, the server's chat completions and eval.

Training's ids come from the run's config (the base's tokenizer with the configured tokens added,
the configured template); each consumer's come from what it opens (the run's saved tokenizer and
template) through its own code. Equal ids mean no second BOS, the same template and the same
added tokens, whatever the text; the first difference is shown token by token.
"""

from __future__ import annotations

from collections.abc import Callable

from lorakit.infer.generate import prompt_ids
from lorakit.serve.app import chat_prompt_ids
from lorakit.serve.schemas import ChatRequest
from lorakit.templates import Conversation
from lorakit.verify.report import FAIL, PASS, Check, first_mismatch, token_text
from lorakit.verify.subject import Subject


def consumers(subject: Subject) -> dict[str, Callable[[Conversation], list[int]]]:
    """Each consumer's prompt ids for a conversation, built by the code that consumer runs."""
    session = subject.session
    catalog = session.catalog
    chat_choice = catalog.get(catalog.default)  # what `lorakit chat RUN` talks to

    def server(conversation: Conversation) -> list[int]:
        # through the request schema, as a client's JSON arrives
        request = ChatRequest.model_validate({"model": catalog.default, "messages": conversation})
        return chat_prompt_ids(catalog.get(catalog.default), request.conversation())

    return {
        "generate": lambda c: prompt_ids(session.tokenizer, session.template, c),
        "chat": lambda c: prompt_ids(chat_choice.tokenizer, chat_choice.template, c),
        "server": server,
        # eval answers each sample's conversation up to its reference answer (eval.compare)
        "eval": lambda c: prompt_ids(session.tokenizer, session.template, c),
    }


def check_prompt_ids(subject: Subject) -> Check:
    want = subject.training_prompts()
    text_of = token_text(subject.training.tokenizer)
    differ: dict[str, int] = {}
    first = None
    paths = consumers(subject)
    for sample, conversation, ids in zip(subject.held.samples, subject.held.prompts, want):
        for name, build in paths.items():
            found = first_mismatch(ids, build(conversation), text_of, f"{sample.origin} ({name})")
            if found is not None:
                differ[name] = differ.get(name, 0) + 1
                first = first or found
    n = len(want)
    details = {"conversations": n, "paths": list(paths), "differing": differ}
    if first is None:
        return Check("prompt ids", PASS, f"{', '.join(paths)} build training's ids for all {n} prompts",
                     details=details)
    which = ", ".join(f"{name} {count}/{n}" for name, count in differ.items())
    return Check("prompt ids", FAIL, f"prompts differ from training's ids: {which}; {first.lines()[0]}",
                 mismatch=first, details=details)
