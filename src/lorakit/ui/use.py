"""What the dashboard does with a model: the data preview before a run, and chat with a run after.

Both reuse the CLI's own pieces: the preview is ``lorakit data inspect``'s (the data doctor
and samples rendered with the model's template, split into the text that carries loss and the
text that does not); a chat answer is ``lorakit generate``'s (same prompt tokens, same
generation call), so a greedy answer here is the one the command prints.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.config import GenerationConfig, RunConfig
from lorakit.templates import Conversation


def preview(cfg: RunConfig, samples: int = 3, limit: int = 200) -> dict[str, Any]:
    """The data doctor's findings and ``samples`` rendered samples of the first ``limit`` records."""
    from lorakit.data.inspection import inspect_data
    from lorakit.data.pair_dataset import rows_to_read
    from lorakit.model.setup import training_setup
    from lorakit.train.methods import METHODS

    text = training_setup(cfg.model, cfg.data)  # as training sets it up: added tokens are one token each
    kind = rows_to_read(cfg.data.train, cfg.data, METHODS[cfg.method].rows)
    result = inspect_data(cfg.data, text.tokenizer, text.template, model_name=cfg.model.name, samples=samples,
                          limit=limit, kind=kind)
    return {**result.as_dict(), "has_errors": result.has_errors}


@dataclass(frozen=True)
class _Asked:
    """One side's prompt: the model to answer with, the conversation's tokens, the oldest turns left out."""

    side: str  # tuned or base
    name: str  # the catalog's name of the model
    ids: list[int]
    dropped: int


def _answers(catalog: Any, asked: list[_Asked], gen: GenerationConfig) -> Iterator[str]:
    from lorakit.infer.stream import TextStream

    for one in asked:
        choice = catalog.get(one.name)
        answer = TextStream(catalog.model, choice.tokenizer, one.ids, gen, choice.template.end_token_ids,
                            hold=lambda name=one.name: catalog.hold(name))
        for piece in answer:
            yield json.dumps({"side": one.side, "piece": piece}, ensure_ascii=False) + "\n"
        yield json.dumps({"side": one.side, "text": answer.answer.text, "done": True, "dropped": one.dropped},
                         ensure_ascii=False) + "\n"


class Chats:
    """One loaded model per run, kept for the next question; one answer at a time (the adapter is global state)."""

    def __init__(self) -> None:
        self._sessions: dict[Path, Any] = {}
        self._lock = threading.Lock()

    def _session(self, run: Path, cache_dir: Path):
        from lorakit.infer.session import open_session

        if run not in self._sessions:
            self._sessions.clear()  # one model in memory at a time
            self._sessions[run] = open_session(str(run), cache_dir)
        return self._sessions[run]

    def stream(self, run: Path, cache_dir: Path, conversation: Conversation, max_new_tokens: int,
               base: bool) -> Iterator[str]:
        """The answers to the conversation's last turn as they come, one JSON line per piece: the tuned model's,
        then the base's.

        The conversation is rendered with each side's template and its oldest turns left out until
        it fits the context, as ``lorakit chat`` does (a greedy answer equals ``lorakit generate``'s
        for the same messages). Each side ends with a line holding its whole text and how many turns
        were left out. A conversation that cannot fit is refused here, before anything streams.
        """
        from lorakit.infer.catalog import BASE
        from lorakit.infer.chat import fit_history
        from lorakit.infer.generate import check_fits, context_length, prompt_ids

        gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=1)
        with self._lock:
            session = self._session(run, cache_dir)
        catalog, limit = session.catalog, context_length(session.catalog.model, gen)
        asked = []
        for side, name in [("tuned", session.name), *([("base", BASE)] if base else [])]:
            choice = catalog.get(name)

            def count(conv: Conversation, choice=choice) -> int:
                return len(prompt_ids(choice.tokenizer, choice.template, conv))

            fitted, dropped = fit_history(conversation, count, limit - max_new_tokens)
            ids = prompt_ids(choice.tokenizer, choice.template, fitted)
            check_fits([ids], ["the conversation's last turn"], limit, max_new_tokens)
            asked.append(_Asked(side, name, ids, dropped))
        return _answers(catalog, asked, gen)

    def forget(self, run: Path) -> None:
        """A run trained on: its adapter on disk changed, so load it afresh next time."""
        with self._lock:
            self._sessions.pop(run, None)
