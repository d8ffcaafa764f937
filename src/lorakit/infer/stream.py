"""One answer, handed out as text while it is generated: for the terminal chat and the server.

``model.generate`` runs on a worker thread and feeds a ``TextIteratorStreamer``; the caller
iterates text pieces. The worker holds whatever ``hold`` gives it (the server's model lock
with the right adapter switched on) for exactly as long as it generates, so a consumer
that stops reading early, or a client that disconnects, ends the generation and frees the
model by :meth:`TextStream.cancel`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList
from transformers import TextIteratorStreamer

from lorakit.config import GenerationConfig
from lorakit.infer.generate import Answer, finish_reason, sampling_kwargs


class _UntilCancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def held_back(text: str, stop_strings: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string.

    Those are not sent yet: if the stop string completes, they must never reach the client.
    """
    longest = 0
    for stop in stop_strings:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class TextStream:
    """Iterate the answer's text pieces; afterwards :attr:`answer` holds the whole answer."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        ids: list[int],
        gen: GenerationConfig,
        stop_ids: frozenset[int],
        stop_strings: Sequence[str] = (),
        hold: Callable[[], AbstractContextManager] = nullcontext,
        strip_leading: bool = True,
    ):
        self._model, self._ids, self._gen, self._stop_ids = model, ids, gen, stop_ids
        self._stop_strings = [s for s in stop_strings if s]
        self._hold = hold
        self._strip_leading = strip_leading
        self._streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._cancel = threading.Event()
        self._new_ids: list[int] = []
        self._error: BaseException | None = None
        self._stopped_by_string = False
        self.answer: Answer | None = None
        self._thread = threading.Thread(target=self._run, name="lorakit-generate", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._hold(), torch.inference_mode():
                if self._gen.seed is not None:
                    torch.manual_seed(self._gen.seed)  # inside the hold: no other request draws in between
                out = self._model.generate(
                    input_ids=torch.tensor([self._ids], device=self._model.device),
                    attention_mask=torch.ones((1, len(self._ids)), dtype=torch.long, device=self._model.device),
                    max_new_tokens=self._gen.max_new_tokens,
                    eos_token_id=sorted(self._stop_ids),
                    pad_token_id=self._streamer.tokenizer.pad_token_id,
                    streamer=self._streamer,
                    stopping_criteria=StoppingCriteriaList([_UntilCancelled(self._cancel)]),
                    **sampling_kwargs(self._gen),
                )
                self._new_ids = out[0, len(self._ids) :].tolist()
        except BaseException as err:  # handed to the reading thread, which re-raises it
            self._error = err
            self._streamer.end()

    def cancel(self) -> None:
        """Stop generating after the current token (the reader went away)."""
        self._cancel.set()

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._pieces()
        finally:
            if self.answer is None:  # the reader stopped early: nobody wants the rest
                self.cancel()

    def _pieces(self) -> Iterator[str]:
        text, sent = "", 0
        started = not self._strip_leading
        for piece in self._streamer:
            if not started:
                # A chat answer starts at its first visible character (a template may end its
                # prompt before a space that the model then generates); raw completions keep it.
                piece = piece.lstrip()
                started = bool(piece)
            text += piece
            hits = [k for k in (text.find(s, sent) for s in self._stop_strings) if k >= 0]
            if hits:
                text = text[: min(hits)]
                self._stopped_by_string = True
                self.cancel()
                if len(text) > sent:
                    yield text[sent:]
                sent = len(text)
                for _ in self._streamer:  # let the worker finish; its remaining text is dropped
                    pass
                break
            safe = len(text) - held_back(text, self._stop_strings)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if len(text) > sent:
            yield text[sent:]
        self._thread.join()
        if self._error is not None:
            raise self._error
        reason = "stop" if self._stopped_by_string else finish_reason(
            self._new_ids, self._stop_ids, self._gen.max_new_tokens
        )
        self.answer = Answer(text, len(self._ids), len(self._new_ids), reason, self._new_ids)

    def read(self) -> Answer:
        """Consume the whole stream and return the answer."""
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer
