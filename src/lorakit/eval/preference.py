"""Held-out pairs, base against tuned: how often each model prefers the chosen answer.

A model prefers an answer when it gives it the higher sum of token log-probs, log p(y | x),
the quantity DPO trains; both answers are scored as trained (the run's template and masking).
The generation metrics of ``compare`` run beside it on the same prompts, with the chosen
answer as the reference.
"""

from __future__ import annotations

import torch

from lorakit.config import DataConfig
from lorakit.data.pair_dataset import PAIRS
from lorakit.data.pairs import EncodedPair, Pair
from lorakit.data.pipeline import encode_rows, kept
from lorakit.data.records import DataError
from lorakit.data.report import DataReport
from lorakit.eval.compare import Comparison, MetricRow
from lorakit.infer.session import Session
from lorakit.data.collate import PairCollator
from lorakit.model.loss import selective_loss_supported, sequence_logps


@torch.inference_mode()
def margins(session: Session, encoded: list[EncodedPair], batch_size: int) -> list[float]:
    """log p(chosen) - log p(rejected) of each pair under the session's model as it is now."""
    collate = PairCollator(session.tokenizer.pad_token_id)
    selective = selective_loss_supported(session.model)
    out: list[float] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        batch = {k: v.to(session.model.device) for k, v in collate(chunk).items()}
        sums, _ = sequence_logps(session.model, batch, selective=selective)
        out += (sums[: len(chunk)] - sums[len(chunk) :]).tolist()
    return out


def add_preference(result: Comparison, session: Session, pairs: list[Pair], skipped: dict[str, list[str]],
                   data: DataConfig, batch_size: int) -> None:
    """Put preference accuracy and the mean log-prob margin, base and tuned, at the top of ``result``."""
    report = DataReport("eval")
    encoded = kept(encode_rows(pairs, session.tokenizer, session.template, PAIRS.settings(data), report, PAIRS,
                               cache_dir=data.cache_dir, num_proc=data.num_proc))
    for reason, origins in skipped.items():
        result.skipped.setdefault(reason, []).extend(origins)
    scored = {e.origin for e in encoded}
    for pair in pairs:
        if pair.origin not in scored:  # too long, or an empty answer: generations are still scored
            result.loss_excluded.setdefault("pair not scored for preference: " + _reason(report), []).append(
                pair.origin)
    if not encoded:
        raise DataError("no held-out pair can be scored for preference: " + "; ".join(report.lines()[1:]))
    was_training = session.model.training
    session.model.eval()
    try:
        tuned = margins(session, encoded, batch_size) if session.has_adapter else None
        with session.base_only():
            base = margins(session, encoded, batch_size)
    finally:
        session.model.train(was_training)

    def accuracy(values: list[float] | None) -> float | None:
        return None if values is None else 100.0 * sum(m > 0 for m in values) / len(values)

    def mean(values: list[float] | None) -> float | None:
        return None if values is None else sum(values) / len(values)

    result.metrics[:0] = [
        MetricRow("preference_accuracy", "preference accuracy", True, accuracy(base), accuracy(tuned)),
        MetricRow("logp_margin", "log p(chosen) - log p(rejected)", True, mean(base), mean(tuned)),
    ]
    result.settings["preference"] = {
        "pairs": len(encoded), "origins": [e.origin for e in encoded], "margins": {"base": base, "tuned": tuned},
    }


def _reason(report: DataReport) -> str:
    return ", ".join(sorted(report.dropped)) or "not encoded"
