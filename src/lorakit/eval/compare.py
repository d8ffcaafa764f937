"""Base against tuned on the same held-out samples: answer loss and exact match.

Both sides run on one loaded model, with the adapter switched off for the base, so the only
difference between the two columns is the adapter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from lorakit.config import GenerationConfig
from lorakit.data.collate import PadCollator
from lorakit.data.dataset import Sample, encode_samples
from lorakit.eval.metrics import exact_match
from lorakit.infer.generate import generate_batch
from lorakit.infer.session import Session


@dataclass
class SideScores:
    answer_loss: float
    perplexity: float
    exact_match: float
    answers: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    prompts: list[str]
    references: list[str]
    base: SideScores
    tuned: SideScores | None

    def as_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def answer_loss(session: Session, samples: list[Sample], max_length: int, batch_size: int) -> float:
    """Token-weighted mean loss over the answer tokens only (the trained part)."""
    encoded, _ = encode_samples(
        samples, session.tokenizer, session.template,
        max_length=max_length, truncation="cut", train_on="all_assistant", split="eval",
    )
    collate = PadCollator(session.tokenizer.pad_token_id)
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded[start : start + batch_size])
        batch = {k: v.to(session.model.device) for k, v in batch.items()}
        logits = session.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
        )
        total += float(losses)
        count += int((targets != -100).sum())
    return total / max(count, 1)


def _side(session: Session, samples: list[Sample], gen: GenerationConfig, max_length: int) -> SideScores:
    prompts = [s.conversation[:-1] for s in samples]
    references = [s.conversation[-1]["content"] for s in samples]
    answers = [a.text for a in generate_batch(session.model, session.tokenizer, session.template, prompts, gen)]
    loss = answer_loss(session, samples, max_length, gen.batch_size)
    em = sum(exact_match(a, r) for a, r in zip(answers, references)) / max(len(samples), 1)
    return SideScores(loss, math.exp(min(loss, 50.0)), em, answers)


def compare(session: Session, samples: list[Sample], gen: GenerationConfig, max_length: int) -> Comparison:
    """Score the base and (when the session has one) the tuned model on samples ending in an answer."""
    usable = [s for s in samples if s.conversation and s.conversation[-1]["role"] == "assistant"]
    if not usable:
        raise ValueError("no evaluation sample ends with an assistant answer to compare against")
    prompts = [s.conversation[-2]["content"] if len(s.conversation) > 1 else "" for s in usable]
    references = [s.conversation[-1]["content"] for s in usable]
    tuned = _side(session, usable, gen, max_length) if session.has_adapter else None
    with session.base_only():
        base = _side(session, usable, gen, max_length)
    return Comparison(prompts, references, base, tuned)
