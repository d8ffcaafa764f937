"""From configured sources to encoded pairs, counted as SFT samples are (see ``dataset``).

The steps are the SFT pipeline's: read records, turn them into pairs, hold out, mix by weight,
shuffle, encode, and report. What differs is the unit: a pair is encoded as two conversations,
the prompt followed by each answer, with only the final answer trained (end-of-turn token
included), exactly as an SFT sample's last answer is. A pair is kept only when both sides fit
``max_length`` whole: a cut answer would compare a truncated answer against a whole one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig, DataSource
from lorakit.data.pipeline import SourceSamples, as_source, duplicates, eval_leaks, mix_sources
from lorakit.data.doctor import doubled_bos, no_end_label
from lorakit.data.encode import EMPTY_PROMPT
from lorakit.data.encode_cache import BadSample, EncodeSettings, encode_cached
from lorakit.data.mixing import hold_out
from lorakit.data.pairs import (
    PROMPTS_DIFFER, SAME_ANSWER, EncodedPair, Pair, PairSkipped, check_pair_source, is_pair, to_pair,
)
from lorakit.data.records import DataError
from lorakit.data.report import MAX_EXAMPLES, DataReport, Finding, SourceSummary
from lorakit.data.sources import read_source
from lorakit.labels import IGNORE_INDEX
from lorakit.templates import ChatTemplate

TOO_LONG = "chosen or rejected longer than max_length (both sides must fit)"
_SKIPPED_HOW = {
    PROMPTS_DIFFER: ("error", "prompts_differ", "pairs whose chosen and rejected conversations have different "
                     "prompts were dropped: a preference compares two answers to one prompt"),
    SAME_ANSWER: ("warning", "identical_answers", "pairs whose chosen and rejected answers are identical were "
                  "dropped: they teach no preference"),
    EMPTY_PROMPT: ("warning", "empty_prompt", "pairs with an empty prompt (no user text) were dropped: they "
                   "compare answers to nothing; fill in the prompt or remove them"),
}

# Each side trains its final answer only, whatever data.train_on says: the pair compares two
# answers to one shared conversation, and earlier assistant turns are that conversation.
PAIR_TRAIN_ON = "last_assistant"


def holds_pairs(sources: Sequence[DataSource | Path | str], cfg: DataConfig) -> bool:
    """Whether data is pairs of answers: data.format says so, or the first source's first readable record."""
    if cfg.format == "preference":
        return True
    if cfg.format != "auto" or not sources:
        return False
    for record in read_source(as_source(sources[0]), cfg.hub_cache, cfg.hub_download).records:
        if not record.problem:
            return is_pair(record.fields, cfg.columns)
    return False


def _records_to_pairs(source: DataSource, cfg: DataConfig, report: DataReport, skipped: dict[str, list[str]]
                      ) -> list[Pair]:
    src = read_source(source, cfg.hub_cache, cfg.hub_download)
    report.records += len(src.records)
    report.sources.append(SourceSummary(src.label, len(src.files), len(src.records), "preference", source.weight))
    pairs = []
    for record in src.records:
        try:
            if record.problem:
                raise record.error(record.problem)
            check_pair_source(record.fields, cfg.columns, record.origin())
            pairs.append(to_pair(record, cfg.system_prompt, cfg.columns))
        except PairSkipped as skip:
            detail = f" ({skip.detail})" if skip.detail else ""
            skipped.setdefault(skip.reason, []).append(record.origin() + detail)
        except DataError as err:
            if not cfg.skip_bad_records:
                raise
            report.skip(str(err))
    return pairs


def read_pairs(sources: Sequence[DataSource | Path | str], cfg: DataConfig, report: DataReport
               ) -> tuple[list[SourceSamples], dict[str, list[str]]]:
    """Read every source of one split as pairs; unusable pairs are counted as dropped, with findings.

    Also returns every unusable pair's origin by reason (the report keeps the first few).
    """
    pools: list[SourceSamples] = []
    skipped: dict[str, list[str]] = {}
    for item in sources:
        source = as_source(item)
        pools.append(SourceSamples(source, _records_to_pairs(source, cfg, report, skipped)))  # type: ignore[arg-type]
    # Skipped pairs were read, so they enter the counts as drops: read = kept + dropped still holds.
    for reason, origins in skipped.items():
        report.read += len(origins)
        for origin in origins:
            report.drop(reason, origin)
        level, code, message = _SKIPPED_HOW[reason]
        report.findings.append(Finding(level, code, f"{len(origins)} {message}", len(origins), origins[:MAX_EXAMPLES]))
    repeats = duplicates([p for pool in pools for p in pool.samples])
    if repeats:
        report.findings.append(Finding("note", "duplicates", f"{len(repeats)} pairs repeat an earlier pair exactly; "
                                       "they are kept and weigh it more", len(repeats), repeats[:MAX_EXAMPLES]))
    return pools, skipped


def encode_pairs(
    pairs: list[Pair], tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, cfg: DataConfig,
    report: DataReport, limit: int | None = None,
) -> list[EncodedPair]:
    """Both sides of each pair with SFT's masking of a last answer; pairs that do not fit are dropped."""
    todo = pairs if limit is None else pairs[:limit]
    # data.truncation=error still stops on an over-long pair; drop and cut both drop it whole.
    settings = EncodeSettings(cfg.max_length, "error" if cfg.truncation == "error" else "drop", PAIR_TRAIN_ON)
    items = [(p.conversation(side), None) for p in todo for side in ("chosen", "rejected")]
    try:
        outcomes = encode_cached(items, tokenizer, template, settings, cfg.cache_dir, cfg.num_proc)
    except BadSample as bad:
        raise DataError(f"{todo[bad.index // 2].origin}: {bad.message}") from None
    encoded, long = [], []
    report.not_encoded += len(pairs) - len(todo)
    for pair, chosen, rejected in zip(todo, outcomes[0::2], outcomes[1::2]):
        report.read += 1
        if isinstance(chosen, str) or isinstance(rejected, str):
            reason = next(o for o in (chosen, rejected) if isinstance(o, str))
            reason = TOO_LONG if reason.startswith("longer than") else reason
            long += [pair.origin] if reason == TOO_LONG else []
            report.drop(reason, pair.origin)
            continue
        chosen.origin = rejected.origin = pair.origin
        report.kept += 1
        for side in (chosen, rejected):
            report.tokens += len(side.input_ids)
            report.loss_tokens += sum(1 for x in side.labels if x != IGNORE_INDEX)
        encoded.append(EncodedPair(chosen, rejected, pair.origin))
    if long:
        report.findings.append(Finding(
            "warning", "pair_too_long",
            f"{len(long)} pairs had a side longer than data.max_length={cfg.max_length} and were dropped whole "
            "(a cut answer would be compared against a whole one); raise data.max_length to keep them",
            len(long), long[:MAX_EXAMPLES],
        ))
    return encoded


@dataclass
class PairSplits:
    train: list[EncodedPair]
    eval: list[EncodedPair]
    reports: list[DataReport]


def _diagnose(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, encoded: list[EncodedPair]) -> list[Finding]:
    """The SFT doctor's checks that concern how each side was rendered and masked."""
    sides = [side for pair in encoded for side in (pair.chosen, pair.rejected)]
    return doubled_bos(tokenizer, sides) + no_end_label(template, sides)


def build_pair_splits(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, *,
    limit: int | None = None, require_samples: bool = True,
) -> PairSplits:
    """Train and eval pairs as configured; ``limit`` encodes only the first N of each (inspection)."""
    if not cfg.train:
        raise DataError("no training data: set data.train to one or more files of pairs (prompt, chosen, rejected)")
    rng = random.Random(cfg.seed)
    train_report, eval_report = DataReport("train"), DataReport("eval")
    train_pools, _ = read_pairs(cfg.train, cfg, train_report)
    held: list[Pair] = []
    if cfg.val_fraction:
        for pool in train_pools:
            pool.samples, out = hold_out(pool.samples, cfg.val_fraction, rng if cfg.shuffle else None)
            held += out  # type: ignore[arg-type]
        train_report.held_out = eval_report.from_train = len(held)
    eval_pools, _ = read_pairs(cfg.eval, cfg, eval_report)
    eval_pairs = held + [p for pool in eval_pools for p in pool.samples]
    train_pairs: list[Pair] = mix_sources(train_pools, rng, train_report)  # type: ignore[assignment]
    if cfg.shuffle:
        rng.shuffle(train_pairs)
    eval_report.findings += eval_leaks(train_pairs, eval_pairs)
    train = encode_pairs(train_pairs, tokenizer, template, cfg, train_report, limit)
    evals = encode_pairs(eval_pairs, tokenizer, template, cfg, eval_report, limit)
    train_report.findings += _diagnose(tokenizer, template, train)
    if require_samples and not train:
        raise DataError("train: no pair is left to train on: " + "; ".join(train_report.lines()[1:]))
    reports = [train_report] + ([eval_report] if eval_report.records or eval_report.from_train else [])
    return PairSplits(train, evals, reports)
