"""From configured sources to encoded samples, with a report of every record's fate.

The order is fixed and each step counts what it does: read records (bad ones stop the run,
or are skipped and counted), turn them into conversations (unanswered trailing user turns
removed and counted), hold out a seeded fraction for eval, mix sources by weight, shuffle,
encode (drops and cuts counted), and let the doctor look at the result.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig, DataSource
from lorakit.data.doctor import diagnose
from lorakit.data.encode import Encoded, content_problem
from lorakit.data.encode_cache import BadSample, EncodeSettings, encode_cached
from lorakit.data.mixing import apply_weight, hold_out
from lorakit.data.records import DataError, Record
from lorakit.data.report import MAX_EXAMPLES, DataReport, Finding, SourceSummary
from lorakit.data.shapes import Conversation, canonical_shape, detect_shape, to_content
from lorakit.data.sources import SourceRecords, read_source
from lorakit.labels import IGNORE_INDEX
from lorakit.templates import ChatTemplate


@dataclass
class Sample:
    """One conversation (or, for the text shape, one text), kept with its origin."""

    conversation: Conversation
    origin: str
    text: str | None = None  # plain language-model text: every token carries loss
    record: dict[str, Any] = field(default_factory=dict)  # the fields as written, for a user's eval scorer

    def key(self) -> tuple:
        """Equal for samples that train the same tokens; used to find repeats and eval leaks."""
        return (self.text, *((m["role"], m["content"]) for m in self.conversation))


class Keyed(Protocol):
    """What the repeat and leak checks need of an item: a sample here, a pair of answers in ``pair_dataset``."""

    origin: str

    def key(self) -> tuple: ...


@dataclass
class SourceSamples:
    """The items one configured source gave (samples, or pairs for a preference run), with its weight."""

    source: DataSource
    samples: list[Sample]


def as_source(item: DataSource | Path | str) -> DataSource:
    """A data.train or data.eval entry as a DataSource: a bare path or hub name gets the defaults (weight 1)."""
    return item if isinstance(item, DataSource) else DataSource(path=str(item))


def _shape_of(records: list[Record], cfg: DataConfig) -> str | None:
    """The configured shape, or the one the first readable record's columns show.

    None when every record is unreadable and skipped: there is nothing to have a shape.
    """
    if cfg.format != "auto":
        return canonical_shape(cfg.format)
    for record in records:
        try:
            if record.problem:
                raise record.error(record.problem)
            return detect_shape(record.fields, cfg.columns)
        except DataError as err:
            if not cfg.skip_bad_records:
                raise (err if record.problem else record.error(str(err))) from None
    return None


def _convert(
    src: SourceRecords, cfg: DataConfig, report: DataReport, unanswered: list[str]
) -> tuple[list[Sample], str]:
    shape = _shape_of(src.records, cfg)
    samples = []
    for record in src.records:
        try:
            if record.problem:
                raise record.error(record.problem)
            if shape is None:
                raise record.error("no record of this source is readable")
            content = to_content(record, shape, cfg.system_prompt, cfg.columns)
        except DataError as err:
            if not cfg.skip_bad_records:
                raise
            report.skip(str(err))
            continue
        if isinstance(content, str):
            samples.append(Sample([], record.origin(), text=content, record=record.fields))
            continue
        if cfg.train_on != "everything" and content[-1]["role"] == "user":
            # The unanswered question teaches nothing (it carries no loss) but costs length.
            unanswered.append(record.origin())
            if any(m["role"] == "assistant" for m in content):
                while content[-1]["role"] == "user":
                    content = content[:-1]
        samples.append(Sample(content, record.origin(), record=record.fields))
    return samples, shape or "unknown"


def duplicates(samples: Sequence[Keyed]) -> list[str]:
    """``"<origin> repeats <origin>"`` for every item whose key an earlier one already had."""
    first: dict[tuple, str] = {}
    repeats = []
    for sample in samples:
        key = sample.key()
        if key in first:
            repeats.append(f"{sample.origin} repeats {first[key]}")
        else:
            first[key] = sample.origin
    return repeats


def read_samples(
    sources: Sequence[DataSource | Path | str], cfg: DataConfig, report: DataReport
) -> list[SourceSamples]:
    """Read and convert every source of one split; quirks of the data go into ``report``."""
    pools, unanswered = [], []
    for item in sources:
        src = read_source(as_source(item), cfg.hub_cache, cfg.hub_download)
        report.records += len(src.records)
        samples, shape = _convert(src, cfg, report, unanswered)
        report.sources.append(SourceSummary(src.label, len(src.files), len(src.records), shape, src.source.weight))
        pools.append(SourceSamples(src.source, samples))
    if unanswered:
        report.findings.append(Finding(
            "note", "ends_on_user",
            f"{len(unanswered)} conversations end on a user turn with no answer; that turn was removed "
            "(a conversation with no answer at all is dropped)",
            len(unanswered), unanswered[:MAX_EXAMPLES],
        ))
    repeats = duplicates([s for p in pools for s in p.samples])
    if repeats:
        report.findings.append(Finding(
            "note", "duplicates",
            f"{len(repeats)} samples repeat an earlier sample exactly; they are kept and weigh it more",
            len(repeats), repeats[:MAX_EXAMPLES],
        ))
    return pools


def read_conversations(
    paths: Sequence[DataSource | Path | str],
    shape: str,
    system_prompt: str | None,
    columns: dict[str, str] | None = None,
) -> list[Sample]:
    """All samples of some files, strictly (the first bad record stops with its file and line)."""
    cfg = DataConfig(format=shape, system_prompt=system_prompt, columns=columns or {})
    return [s for pool in read_samples(paths, cfg, DataReport("read")) for s in pool.samples]


def encode_samples(
    samples: list[Sample],
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    *,
    max_length: int,
    truncation: str,
    train_on: str,
    split: str,
    report: DataReport | None = None,
    require_samples: bool = True,
    limit: int | None = None,
    cache_dir: Path | None = None,
    num_proc: int = 1,
) -> tuple[list[Encoded], DataReport]:
    """Encode samples, counting every drop and cut in ``report``.

    ``limit`` tokenizes only that many samples (an inspection of a large file); the content
    checks, which need no tokenizer, still run on all, so their counts are complete.
    ``cache_dir`` keeps outcomes for the next run; ``num_proc`` workers encode (0: auto).
    """
    report = report if report is not None else DataReport(split)
    # Content checks need no tokenizer, so they run on every sample even under ``limit``.
    todo: list[int] = []
    problems: dict[int, str] = {}
    for k, sample in enumerate(samples):
        problem = content_problem(sample.conversation, sample.text, train_on)
        if problem:
            problems[k] = problem
        elif limit is None or len(todo) < limit:
            todo.append(k)
    try:
        outcomes = dict(zip(todo, encode_cached(
            [(samples[k].conversation, samples[k].text) for k in todo], tokenizer, template,
            EncodeSettings(max_length, truncation, train_on), cache_dir, num_proc,
        )))
    except BadSample as bad:
        raise DataError(f"{samples[todo[bad.index]].origin}: {bad.message}") from None

    encoded: list[Encoded] = []
    for k, sample in enumerate(samples):  # in order, so the report's examples are the first ones
        report.read += 1
        if k in problems:
            report.drop(problems[k], sample.origin)
            continue
        item = outcomes.get(k)
        if item is None:
            report.not_encoded += 1
            continue
        if isinstance(item, str):
            report.drop(item, sample.origin)
            continue
        item.origin = sample.origin
        if item.cut_tokens:
            report.truncated += 1
            report.tokens_cut += item.cut_tokens
            report.answers_lost_end += int(item.lost_end)
        report.kept += 1
        report.tokens += len(item.input_ids)
        report.loss_tokens += sum(1 for x in item.labels if x != IGNORE_INDEX)
        encoded.append(item)
    if require_samples and not encoded and samples:
        raise DataError(f"{split}: all {len(samples)} samples were dropped: " + "; ".join(report.lines()[1:]))
    return encoded, report


@dataclass
class Splits:
    train: list[Encoded]
    eval: list[Encoded]
    reports: list[DataReport]


def mix_sources(pools: list[SourceSamples], rng: random.Random, report: DataReport) -> list[Sample]:
    """The sources' items in order, each source's repeated or thinned to its weight (seeded); counted in ``report``."""
    mixed: list[Sample] = []
    for pool in pools:
        samples, repeated, left_out = apply_weight(pool.samples, pool.source.weight, rng)
        report.repeated += repeated
        report.left_out += left_out
        mixed += samples
    return mixed


def eval_leaks(train: Sequence[Keyed], held: Sequence[Keyed]) -> list[Finding]:
    """A warning naming the eval items that are also training items (same key); none when there are none."""
    seen = {s.key(): s.origin for s in train}
    hits = [f"{s.origin} = {seen[s.key()]}" for s in held if s.key() in seen]
    if not hits:
        return []
    return [Finding(
        "warning", "eval_in_train",
        f"{len(hits)} eval samples also appear in the training data, so eval loss overstates how well it generalizes",
        len(hits), hits[:MAX_EXAMPLES],
    )]


def build_splits(
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    *,
    limit: int | None = None,
    require_samples: bool = True,
) -> Splits:
    """Train and eval samples as configured; ``limit`` encodes only the first N of each (inspection)."""
    if not cfg.train:
        raise DataError("no training data: set data.train to one or more files, globs or hub datasets")
    rng = random.Random(cfg.seed)
    train_report, eval_report = DataReport("train"), DataReport("eval")
    train_pools = read_samples(cfg.train, cfg, train_report)
    held: list[Sample] = []
    if cfg.val_fraction:
        for pool in train_pools:
            pool.samples, out = hold_out(pool.samples, cfg.val_fraction, rng if cfg.shuffle else None)
            held += out
        train_report.held_out = eval_report.from_train = len(held)
    eval_samples = held + [s for pool in read_samples(cfg.eval, cfg, eval_report) for s in pool.samples]
    train_samples = mix_sources(train_pools, rng, train_report)
    if cfg.shuffle:
        rng.shuffle(train_samples)
    if not train_samples and require_samples:
        left = "; ".join(train_report.lines())
        raise DataError(f"no training samples are left after holding out and weighting: {left}")
    eval_report.findings += eval_leaks(train_samples, eval_samples)

    encoded: dict[str, list[Encoded]] = {}
    for split, samples, report in (("train", train_samples, train_report), ("eval", eval_samples, eval_report)):
        encoded[split], _ = encode_samples(
            samples, tokenizer, template, max_length=cfg.max_length, truncation=cfg.truncation,
            train_on=cfg.train_on, split=split, report=report, require_samples=require_samples, limit=limit,
            cache_dir=cfg.cache_dir, num_proc=cfg.num_proc,
        )
        report.findings += diagnose(
            tokenizer, template, encoded[split], report,
            has_conversations=any(s.text is None for s in samples), has_text=any(s.text is not None for s in samples),
        ) if split == "train" else []
    reports = [train_report] + ([eval_report] if eval_report.records or eval_report.from_train else [])
    return Splits(encoded["train"], encoded["eval"], reports)
