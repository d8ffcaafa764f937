"""What every check looks at: the run, its held-out conversations, and what training made of them.

Two text setups meet here. ``training`` is the one a run trains with, rebuilt from its config
(the base's tokenizer, the configured tokens added, the configured template); ``session`` is what
every consumer opens (the run's saved tokenizer and template, base + adapter). The checks hold
each consumer to ``training``. Expensive things (the tuned model's greedy answers, the merged
model) are made once, on first use, and shared by the checks that need them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel

from lorakit.config import GenerationConfig, RunConfig
from lorakit.data.encode import encode_conversation
from lorakit.infer.generate import Answer, generate_ids, prompt_ids
from lorakit.infer.session import Session
from lorakit.labels import IGNORE_INDEX
from lorakit.model.setup import TextSetup
from lorakit.templates import Conversation
from lorakit.verify.logits import logits
from lorakit.verify.prompts import HeldOut

# The shortest answer limit: a model that has learned to stop says so well within it.
MIN_LIMIT = 32


def training_ids(text: TextSetup, conversation: Conversation) -> tuple[list[int], list[int]]:
    """The ids training built for ``conversation`` (ending with an answer): (the prompt before the answer, the answer).

    The answer is what carries loss, its end-of-turn token included; the prompt is everything before it.
    """
    encoded = encode_conversation(text.tokenizer, text.template, conversation, max_length=2**31 - 1,
                                  train_on="last_assistant")
    first = next(k for k, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    answer = [t for t, label in zip(encoded.input_ids[first:], encoded.labels[first:]) if label != IGNORE_INDEX]
    return encoded.input_ids[:first], answer


@dataclass
class Subject:
    run: Path
    cfg: RunConfig
    held: HeldOut
    session: Session  # base + adapter as chat, generate, eval and serve open it
    training: TextSetup
    _prompts: list[list[int]] | None = field(default=None, repr=False)
    _answers: list[Answer] | None = field(default=None, repr=False)
    _merged: PreTrainedModel | None = field(default=None, repr=False)
    _merged_answers: list[tuple[list[int], np.ndarray]] | None = field(default=None, repr=False)

    def training_prompts(self) -> list[list[int]]:
        """Training's prompt ids for each held-out conversation (errors of encoding surface here)."""
        if self._prompts is None:
            self._prompts = [training_ids(self.training, s.conversation)[0] for s in self.held.samples]
        return self._prompts

    def reference_lengths(self) -> list[int]:
        return [len(training_ids(self.training, s.conversation)[1]) for s in self.held.samples]

    def limit(self) -> int:
        """The answer length a stopping model stays within: twice the longest reference answer and some,
        at least MIN_LIMIT, at most the run's generation.max_new_tokens."""
        wanted = max(MIN_LIMIT, 2 * max(self.reference_lengths()) + 16)
        return min(self.cfg.generation.max_new_tokens, wanted)

    def greedy(self) -> GenerationConfig:
        return GenerationConfig(temperature=0, max_new_tokens=self.limit(),
                                batch_size=self.cfg.generation.batch_size)

    def answer(self, prompts: list[list[int]]) -> list[Answer]:
        """Greedy answers of the session's model as it is now (adapter on, or off inside ``base_only``)."""
        return generate_ids(self.session.model, self.session.tokenizer, prompts, self.greedy(),
                            self.session.template.end_token_ids)

    def consumer_prompts(self) -> list[list[int]]:
        """The prompt ids ``generate`` builds from the run's saved tokenizer and template."""
        return [prompt_ids(self.session.tokenizer, self.session.template, c) for c in self.held.prompts]

    def tuned_answers(self) -> list[Answer]:
        """base + adapter's greedy answers to training's prompts, made once."""
        if self._answers is None:
            self._answers = self.answer(self.training_prompts())
        return self._answers

    def merged(self) -> PreTrainedModel:
        """The run merged as ``lorakit merge`` merges it, in float32, made once."""
        if self._merged is None:
            from lorakit.export.merge import merged_model

            self._merged = merged_model(self.run)[0]
        return self._merged

    def merged_answers(self) -> list[tuple[list[int], np.ndarray]]:
        """The merged model's greedy answer to each of training's prompts, with its logits along prompt + answer:
        what every GGUF is held to, made once."""
        if self._merged_answers is None:
            merged, prompts = self.merged(), self.training_prompts()
            answers = generate_ids(merged, self.session.tokenizer, prompts, self.greedy(),
                                   self.session.template.end_token_ids)
            self._merged_answers = [(a.token_ids, logits(merged, ids + a.token_ids)) for ids, a in zip(prompts, answers)]
        return self._merged_answers
