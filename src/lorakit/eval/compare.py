"""Base against tuned on the same held-out samples: answer loss, generations and their scores.

Both sides run on one loaded model, with the adapter switched off for the base, so the only
difference between the two columns is the adapter. Every sample keeps its origin, its
answers and its scores, so the report can show exactly where the adapter changed things.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.progress import Progress, TaskID

from lorakit.config import GenerationConfig
from lorakit.data.collate import PadCollator
from lorakit.data.encode import Encoded
from lorakit.data.encode_cache import EncodeSettings
from lorakit.data.pipeline import encode_rows
from lorakit.data.report import DataReport
from lorakit.data.samples import Sample
from lorakit.data.shapes import COLUMN_NAMES
from lorakit.errors import LorakitError
from lorakit.eval.metrics import chrf, corpus_scores, normalize, sentence_scores, signatures
from lorakit.eval.scorer import UserScorer
from lorakit.infer.generate import Answer, generate_batch
from lorakit.infer.session import Session
from lorakit.model.loss import answer_token_losses
from lorakit.train.rewards import RewardFunction, score


class EvalError(LorakitError, ValueError):
    """Nothing can be evaluated as asked; the message says why."""


@dataclass
class SideResult:
    """One sample as one model answered it."""

    answer: str
    loss: float | None  # mean over this sample's answer tokens; None when it has none left
    scores: dict[str, float]


@dataclass
class SampleResult:
    index: int
    origin: str
    prompt: str  # the last user turn, for display; the whole prompt is in ``messages``
    messages: list[dict[str, str]]
    reference: str
    base: SideResult | None = None
    tuned: SideResult | None = None


@dataclass
class MetricRow:
    key: str
    label: str
    higher_is_better: bool
    base: float | None
    tuned: float | None

    @property
    def change(self) -> float | None:
        return None if self.base is None or self.tuned is None else self.tuned - self.base


@dataclass
class Comparison:
    metrics: list[MetricRow]
    samples: list[SampleResult]
    examples: list[int]  # indices into samples: the answers that changed most, most first (base alone: the first)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> origins; not scored at all
    loss_excluded: dict[str, list[str]] = field(default_factory=dict)  # scored, but no answer loss
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, raw in zip(self.metrics, data["metrics"]):
            raw["change"] = row.change
        return data

    def row(self, key: str) -> MetricRow:
        return next(r for r in self.metrics if r.key == key)


@dataclass
class Scoring:
    """How answers are scored: the run's own data settings for the loss, plus the user's scorer."""

    max_length: int
    train_on: str = "all_assistant"
    scorer: UserScorer | None = None
    examples: int = 3
    rewards: list[RewardFunction] = field(default_factory=list)  # a GRPO run's reward functions, each a column


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _advance(progress: Progress | None, task: TaskID | None, steps: int) -> None:
    if progress is not None and task is not None:
        progress.advance(task, steps)


@torch.inference_mode()
def answer_losses(
    session: Session, encoded: list[Encoded | None], batch_size: int, progress: Progress | None = None,
    task: TaskID | None = None,
) -> list[tuple[float, int] | None]:
    """Summed loss and token count over each sample's answer tokens (the trained part)."""
    collate = PadCollator(session.tokenizer.pad_token_id)
    present = [i for i, e in enumerate(encoded) if e is not None]
    results: list[tuple[float, int] | None] = [None] * len(encoded)
    for rows in _chunks(present, batch_size):
        batch = {k: v.to(session.model.device) for k, v in collate([encoded[i] for i in rows]).items()}
        losses, row_of = answer_token_losses(session.model, batch)
        sums = torch.zeros(len(rows), dtype=torch.float32, device=losses.device).index_add_(0, row_of, losses)
        counts = torch.bincount(row_of, minlength=len(rows))
        for row, index in enumerate(rows):
            results[index] = (float(sums[row]), int(counts[row]))
        _advance(progress, task, len(rows))
    return results


def answer_loss(session: Session, samples: list[Sample], max_length: int, batch_size: int) -> float:
    """One number: the token-weighted mean answer loss over ``samples`` (what bench/ compares)."""
    encoded, _ = _encode_all(session, samples, Scoring(max_length))
    pairs = [x for x in answer_losses(session, encoded, batch_size) if x is not None]
    return sum(s for s, _ in pairs) / max(sum(n for _, n in pairs), 1)


def _answers(
    session: Session, samples: list[Sample], gen: GenerationConfig, progress: Progress | None, task: TaskID | None
) -> list[Answer]:
    # Batch by batch rather than one generate_batch call, so the progress bar moves.
    answers: list[Answer] = []
    for chunk in _chunks([s.conversation[:-1] for s in samples], gen.batch_size):
        answers += generate_batch(session.model, session.tokenizer, session.template, chunk, gen)
        _advance(progress, task, len(chunk))
    return answers


def reward_scores(rewards: list[RewardFunction], samples: list[Sample], answers: list[Answer]) -> torch.Tensor:
    """(samples, functions) scores of the answers, NaN where a function does not score one; each function
    sees the sample's columns and its reference as GRPO training does."""
    names = sorted({k for s in samples for k in s.record} - set(COLUMN_NAMES))
    columns: dict[str, list] = {name: [s.record.get(name) for s in samples] for name in names}
    if "reference" not in columns:
        columns["reference"] = [s.conversation[-1]["content"] for s in samples]
    columns["completion_ids"] = [a.token_ids for a in answers]
    columns["truncated"] = [a.finish_reason == "length" for a in answers]
    return score(rewards, [_last_user_turn(s) for s in samples], [a.text for a in answers], columns,
                 [s.origin for s in samples])


def _usable(samples: list[Sample]) -> tuple[list[Sample], dict[str, list[str]]]:
    usable, skipped = [], {}
    for sample in samples:
        conv = sample.conversation
        if not conv or conv[-1]["role"] != "assistant":
            skipped.setdefault("does not end with an assistant answer", []).append(sample.origin)
        elif not conv[-1]["content"].strip():
            skipped.setdefault("empty reference answer", []).append(sample.origin)
        else:
            usable.append(sample)
    return usable, skipped


def _encode_all(session: Session, samples: list[Sample], scoring: Scoring) -> tuple[list[Encoded | None], dict]:
    """Cut, never drop, over-long samples: a sample still counts for the generated answers."""
    settings = EncodeSettings(scoring.max_length, "cut", scoring.train_on)
    outcomes = encode_rows(samples, session.tokenizer, session.template, settings, DataReport("eval"))
    excluded: dict[str, list[str]] = {}
    for sample, outcome in zip(samples, outcomes):
        if isinstance(outcome, str):
            excluded.setdefault(outcome, []).append(sample.origin)
    return [o if isinstance(o, Encoded) else None for o in outcomes], excluded


def _last_user_turn(sample: Sample) -> str:
    return next((m["content"] for m in reversed(sample.conversation[:-1]) if m["role"] == "user"), "")


def _run_side(
    name: str, session: Session, samples: list[Sample], encoded: list[Encoded | None], gen: GenerationConfig,
    scoring: Scoring, progress: Progress | None,
) -> tuple[list[SideResult], dict[str, float | None]]:
    steps = len(samples) + sum(e is not None for e in encoded)  # every answer, every loss
    task = progress.add_task(f"{name} model", total=steps) if progress is not None else None
    generated = _answers(session, samples, gen, progress, task)
    answers = [a.text for a in generated]
    losses = answer_losses(session, encoded, gen.batch_size, progress, task)
    rewards = reward_scores(scoring.rewards, samples, generated) if scoring.rewards else None
    results = []
    for k, (sample, answer, loss) in enumerate(zip(samples, answers, losses)):
        reference = sample.conversation[-1]["content"]
        scores = sentence_scores(answer, reference)
        if scoring.scorer is not None:
            scores["scorer"] = scoring.scorer(answer, reference, sample.record, sample.origin)
        for j, reward in enumerate(scoring.rewards):
            if not math.isnan(rewards[k, j]):
                scores[f"reward/{reward.name}"] = float(rewards[k, j])
        results.append(SideResult(answer, None if loss is None else loss[0] / max(loss[1], 1), scores))
    references = [s.conversation[-1]["content"] for s in samples]
    totals: dict[str, float | None] = dict(corpus_scores(answers, references, [r.scores for r in results]))
    summed = [x for x in losses if x is not None]
    tokens = sum(n for _, n in summed)
    loss = sum(s for s, _ in summed) / tokens if tokens else None
    totals["answer_loss"], totals["perplexity"] = loss, (math.exp(min(loss, 50.0)) if loss is not None else None)
    if scoring.scorer is not None:
        totals["scorer"] = sum(r.scores["scorer"] for r in results) / len(results)
    for j, reward in enumerate(scoring.rewards):  # the mean over the answers the function scores
        found = rewards[:, j][~torch.isnan(rewards[:, j])]
        totals[f"reward/{reward.name}"] = float(found.mean()) if found.numel() else None
    return results, totals


Totals = dict[str, float | None]


def _rows(base: Totals | None, tuned: Totals | None, scorer: UserScorer | None,
          rewards: list[RewardFunction]) -> list[MetricRow]:
    labels = [("answer_loss", "answer loss", False), ("perplexity", "answer perplexity", False),
              ("exact_match", "exact match", True), ("chrf", "chrF", True), ("bleu", "BLEU", True),
              ("rouge_l", "ROUGE-L", True)]
    if scorer is not None:
        labels.append(("scorer", scorer.name, True))
    labels += [(f"reward/{r.name}", f"reward {r.name}", True) for r in rewards]
    return [MetricRow(key, label, up, base[key] if base else None, tuned[key] if tuned else None)
            for key, label, up in labels]


def changed_most(samples: list[SampleResult], count: int) -> list[int]:
    """Samples whose answer changed, ranked by how far chrF against the reference moved
    (either way: regressions matter as much as gains), then by how different the answers are."""

    def key(s: SampleResult) -> tuple[float, float]:
        assert s.base is not None and s.tuned is not None
        return abs(s.tuned.scores["chrf"] - s.base.scores["chrf"]), 100.0 - chrf(s.tuned.answer, s.base.answer)

    changed = [s for s in samples if s.base and s.tuned and normalize(s.base.answer) != normalize(s.tuned.answer)]
    return [s.index for s in sorted(changed, key=key, reverse=True)[:count]]


def compare(
    session: Session, samples: list[Sample], gen: GenerationConfig, scoring: Scoring,
    progress: Progress | None = None,
) -> Comparison:
    """Score the tuned model (when the session has an adapter) and the base, on the same samples."""
    usable, skipped = _usable(samples)
    if not usable:
        reasons = "; ".join(f"{len(v)} {k}" for k, v in skipped.items()) or "no samples"
        raise EvalError(f"no evaluation sample can be scored: {reasons}")
    encoded, excluded = _encode_all(session, usable, scoring)
    results = [SampleResult(i, s.origin, _last_user_turn(s), s.conversation[:-1], s.conversation[-1]["content"])
               for i, s in enumerate(usable)]
    was_training = session.model.training
    session.model.eval()  # dropout off: both columns must be deterministic
    try:
        tuned_totals = base_totals = None
        if session.has_adapter:
            sides, tuned_totals = _run_side("tuned", session, usable, encoded, gen, scoring, progress)
            for result, side in zip(results, sides):
                result.tuned = side
        with session.base_only():
            sides, base_totals = _run_side("base", session, usable, encoded, gen, scoring, progress)
        for result, side in zip(results, sides):
            result.base = side
    finally:
        session.model.train(was_training)
    settings = {
        "samples_read": len(samples), "samples_scored": len(usable), "generation": gen.model_dump(),
        "max_length": scoring.max_length, "train_on": scoring.train_on,
        "scorer": scoring.scorer.spec if scoring.scorer else None, "sacrebleu": signatures(),
    }
    # With no tuned column nothing changed: the first samples stand as examples.
    first = list(range(min(scoring.examples, len(results))))
    examples = changed_most(results, scoring.examples) if tuned_totals else first
    return Comparison(_rows(base_totals, tuned_totals, scoring.scorer, scoring.rewards), results, examples, skipped, excluded, settings)
