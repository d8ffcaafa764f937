"""From configured sources to encoded rows, with a report of every record's fate: one path for every kind of row.

The order is fixed and each step counts what it does: read records (bad ones stop the run,
or are skipped and counted), turn each into a row of the kind the method reads (unusable ones
dropped and counted), hold out a seeded fraction for eval, mix sources by weight, shuffle,
encode (drops and cuts counted), and let the doctor look at the result. What differs by kind
of row (an SFT sample in ``samples``, a pair of answers in ``pair_dataset``) is a :class:`Rows`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig, DataSource
from lorakit.data.encode import Encoded, content_problem
from lorakit.data.encode_cache import BadSample, EncodeSettings, encode_cached
from lorakit.data.mixing import apply_weight, hold_out
from lorakit.data.records import DataError, Record, Unusable
from lorakit.data.report import MAX_EXAMPLES, DataReport, Finding, SourceSummary
from lorakit.data.samples import SAMPLES
from lorakit.data.shapes import Conversation
from lorakit.data.sources import as_source, read_source
from lorakit.labels import IGNORE_INDEX
from lorakit.templates import ChatTemplate


class Row(Protocol):
    """What the path needs of a row: where it came from, and a key equal for rows that train the same thing."""

    origin: str

    def key(self) -> tuple: ...


class Rows(Protocol):
    """A kind of row: how a record becomes one, and how it is encoded, as one or more sequences."""

    noun: str  # "samples": in counts and messages
    one: str  # "sample"
    sides: tuple[str, ...]  # what each encoded sequence of a row is ("chosen", "rejected"), for display
    no_data: str  # what to set when there is no training data

    def shape(self, records: list[Record], cfg: DataConfig) -> str | None:
        """The shape of one source's records, for the report (None: nothing readable)."""

    def parse(self, record: Record, shape: str | None, cfg: DataConfig, notes: dict[str, list[str]]) -> Row:
        """One record's row; raises DataError for a malformed record, Unusable for a useless one.
        ``notes``: origins by note code, for ``read_findings``."""

    def read_findings(self, notes: dict[str, list[str]], unusable: dict[str, list[str]]) -> list[Finding]: ...

    def settings(self, cfg: DataConfig) -> EncodeSettings:
        """How the rows are tokenized and masked."""

    def parts(self, row: Any) -> list[tuple[Conversation, str | None]]:
        """The conversations (or texts) a row is encoded as."""

    def reason(self, dropped: str) -> str:
        """A part's drop reason as the report counts it for the row."""

    def join(self, row: Any, encoded: list[Encoded]) -> Any:
        """The encoded row, from its parts' encodings."""

    def sequences(self, encoded: Any) -> list[Encoded]:
        """An encoded row's sequences, one per side."""

    def encode_findings(self, report: DataReport, settings: EncodeSettings) -> list[Finding]: ...

    def references(self, rows: list[Any]) -> list[Any]:
        """The samples (``data.samples.Sample``) that eval's generations are scored against."""

    def diagnose(self, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, rows: list[Any],
                 encoded: list[Any], report: DataReport) -> list[Finding]:
        """The doctor's findings about the encoded training split."""


@dataclass
class SourceRows:
    """The rows one configured source gave, with its weight."""

    source: DataSource
    rows: list[Any]


def duplicates(rows: Sequence[Row]) -> list[str]:
    """``"<origin> repeats <origin>"`` for every row whose key an earlier one already had."""
    first: dict[tuple, str] = {}
    repeats = []
    for row in rows:
        key = row.key()
        if key in first:
            repeats.append(f"{row.origin} repeats {first[key]}")
        else:
            first[key] = row.origin
    return repeats


def read_rows(
    sources: Sequence[DataSource | Path | str], cfg: DataConfig, report: DataReport, kind: Rows = SAMPLES,
) -> tuple[list[SourceRows], dict[str, list[str]]]:
    """Read every source of one split; quirks of the data go into ``report``.

    Unusable rows are counted as read and dropped. Also returns every unusable row's origin by
    reason (the report keeps the first few).
    """
    pools: list[SourceRows] = []
    notes: dict[str, list[str]] = {}
    unusable: dict[str, list[str]] = {}
    for item in sources:
        src = read_source(as_source(item), cfg.hub_cache, cfg.hub_download)
        report.records += len(src.records)
        shape = kind.shape(src.records, cfg)
        rows = []
        for record in src.records:
            try:
                if record.problem:
                    raise record.error(record.problem)
                rows.append(kind.parse(record, shape, cfg, notes))
            except Unusable as skip:
                detail = f" ({skip.detail})" if skip.detail else ""
                unusable.setdefault(skip.reason, []).append(record.origin() + detail)
            except DataError as err:
                if not cfg.skip_bad_records:
                    raise
                report.skip(str(err))
        report.sources.append(SourceSummary(src.label, len(src.files), len(src.records), shape or "unknown",
                                            src.source.weight))
        pools.append(SourceRows(src.source, rows))
    # Unusable rows were read, so they enter the counts as drops: read = kept + dropped still holds.
    for reason, origins in unusable.items():
        report.read += len(origins)
        for origin in origins:
            report.drop(reason, origin)
    report.findings += kind.read_findings(notes, unusable)
    repeats = duplicates([r for pool in pools for r in pool.rows])
    if repeats:
        report.findings.append(Finding(
            "note", "duplicates",
            f"{len(repeats)} {kind.noun} repeat an earlier {kind.one} exactly; they are kept and weigh it more",
            len(repeats), repeats[:MAX_EXAMPLES],
        ))
    return pools, unusable


def read_all(sources: Sequence[DataSource | Path | str], cfg: DataConfig, kind: Rows = SAMPLES
             ) -> tuple[list[Any], dict[str, list[str]]]:
    """Every row of some files, strictly (the first bad record stops with its file and line); unusable ones by reason."""
    strict = cfg.model_copy(update={"skip_bad_records": False})
    pools, unusable = read_rows(sources, strict, DataReport("read"), kind)
    return [r for pool in pools for r in pool.rows], unusable


def encode_rows(
    rows: Sequence[Any],
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    settings: EncodeSettings,
    report: DataReport,
    kind: Rows = SAMPLES,
    *,
    limit: int | None = None,
    cache_dir: Path | None = None,
    num_proc: int = 1,
) -> list[Any]:
    """Encode rows, counting every drop and cut in ``report``: per row, the encoded row, the reason it
    was dropped (a string), or None (beyond ``limit``).

    ``limit`` tokenizes only that many rows (an inspection of a large file); the content checks,
    which need no tokenizer, still run on all, so their counts are complete. ``cache_dir`` keeps
    outcomes for the next run; ``num_proc`` workers encode (0: auto).
    """
    parts = [kind.parts(row) for row in rows]
    todo: list[int] = []
    problems: dict[int, str] = {}
    for k, row_parts in enumerate(parts):
        problem = next(filter(None, (content_problem(conv, text, settings.train_on) for conv, text in row_parts)), None)
        if problem:
            problems[k] = problem
        elif limit is None or len(todo) < limit:
            todo.append(k)
    owners = [k for k in todo for _ in parts[k]]
    try:
        flat = encode_cached([p for k in todo for p in parts[k]], tokenizer, template, settings, cache_dir, num_proc)
    except BadSample as bad:
        raise DataError(f"{rows[owners[bad.index]].origin}: {bad.message}") from None
    outcomes: dict[int, list] = {}
    for k, outcome in zip(owners, flat):
        outcomes.setdefault(k, []).append(outcome)

    results: list[Any] = []
    for k, row in enumerate(rows):  # in order, so the report's examples are the first ones
        report.read += 1
        found = outcomes.get(k)
        dropped = problems.get(k) or next((o for o in found or [] if isinstance(o, str)), None)
        if dropped is not None:
            report.drop(kind.reason(dropped), row.origin)
            results.append(kind.reason(dropped))
            continue
        if found is None:
            report.not_encoded += 1
            results.append(None)
            continue
        for item in found:
            item.origin = row.origin
        if any(item.cut_tokens for item in found):
            report.truncated += 1
            report.tokens_cut += sum(item.cut_tokens for item in found)
            report.answers_lost_end += sum(int(item.lost_end) for item in found)
        report.kept += 1
        report.tokens += sum(len(item.input_ids) for item in found)
        report.loss_tokens += sum(1 for item in found for x in item.labels if x != IGNORE_INDEX)
        results.append(kind.join(row, found))
    report.findings += kind.encode_findings(report, settings)
    return results


def kept(outcomes: list[Any]) -> list[Any]:
    """The encoded rows among ``encode_rows``'s outcomes."""
    return [o for o in outcomes if o is not None and not isinstance(o, str)]


@dataclass
class Splits:
    train: list[Any]  # encoded rows: Encoded samples, EncodedPair pairs
    eval: list[Any]
    reports: list[DataReport]


def mix_sources(pools: list[SourceRows], rng: random.Random, report: DataReport) -> list[Any]:
    """The sources' rows in order, each source's repeated or thinned to its weight (seeded); counted in ``report``."""
    mixed: list[Any] = []
    for pool in pools:
        rows, repeated, left_out = apply_weight(pool.rows, pool.source.weight, rng)
        report.repeated += repeated
        report.left_out += left_out
        mixed += rows
    return mixed


def eval_leaks(train: Sequence[Row], held: Sequence[Row]) -> list[Finding]:
    """A warning naming the eval rows that are also training rows (same key); none when there are none."""
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
    kind: Rows = SAMPLES,
    *,
    limit: int | None = None,
    require_samples: bool = True,
) -> Splits:
    """Train and eval rows of ``kind`` as configured; ``limit`` encodes only the first N of each (inspection)."""
    if not cfg.train:
        raise DataError(f"no training data: {kind.no_data}")
    rng = random.Random(cfg.seed)
    train_report, eval_report = DataReport("train"), DataReport("eval")
    train_pools, _ = read_rows(cfg.train, cfg, train_report, kind)
    held: list[Any] = []
    if cfg.val_fraction:
        for pool in train_pools:
            pool.rows, out = hold_out(pool.rows, cfg.val_fraction, rng if cfg.shuffle else None)
            held += out
        train_report.held_out = eval_report.from_train = len(held)
    eval_rows = held + [r for pool in read_rows(cfg.eval, cfg, eval_report, kind)[0] for r in pool.rows]
    train_rows = mix_sources(train_pools, rng, train_report)
    if cfg.shuffle:
        rng.shuffle(train_rows)
    if not train_rows and require_samples:
        left = "; ".join(train_report.lines())
        raise DataError(f"no training {kind.noun} are left after holding out and weighting: {left}")
    eval_report.findings += eval_leaks(train_rows, eval_rows)

    encoded: dict[str, list[Any]] = {}
    settings = kind.settings(cfg)
    for split, rows, report in (("train", train_rows, train_report), ("eval", eval_rows, eval_report)):
        encoded[split] = kept(encode_rows(rows, tokenizer, template, settings, report, kind, limit=limit,
                                          cache_dir=cfg.cache_dir, num_proc=cfg.num_proc))
        if require_samples and not encoded[split] and rows:
            raise DataError(f"{split}: all {len(rows)} {kind.noun} were dropped: " + "; ".join(report.lines()[1:]))
    train_report.findings += kind.diagnose(tokenizer, template, train_rows, encoded["train"], train_report)
    reports = [train_report] + ([eval_report] if eval_report.records or eval_report.from_train else [])
    return Splits(encoded["train"], encoded["eval"], reports)
