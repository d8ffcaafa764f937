"""What ``lorakit data inspect`` finds out: the data exactly as training will see it.

It runs the same ``build_splits`` as training (so what it shows is what is trained), then
adds what a person needs to judge it: length histograms, the share of tokens that carry
loss, and a few samples split into their masked and trained parts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig
from lorakit.data.encode import IGNORE_INDEX, Encoded
from lorakit.data.pipeline import Rows, build_splits
from lorakit.data.report import DataReport
from lorakit.data.samples import SAMPLES
from lorakit.templates import ChatTemplate

@dataclass
class Segment:
    text: str
    trained: bool


@dataclass
class RenderedSample:
    split: str
    origin: str
    segments: list[Segment]


@dataclass
class Lengths:
    """Token lengths of the kept samples of one split: histogram rows share one set of bins."""

    split: str
    edges: list[int]
    counts: dict[str, list[int]]  # kind -> samples per bin (edges[i], edges[i + 1]]
    stats: dict[str, dict[str, int]]  # kind -> min, median, p95, max
    loss_share: float


@dataclass
class Inspection:
    model: str
    template: str
    end_tokens: list[str]
    max_length: int
    train_on: str  # the masking mode the rows were encoded with; for pairs their own, not data.train_on
    reports: list[DataReport]
    lengths: list[Lengths]
    samples: list[RenderedSample] = field(default_factory=list)
    pairs: bool = False  # rows of two sides (pairs of answers): lengths and samples count each side

    @property
    def has_errors(self) -> bool:
        return any(f.level == "error" for r in self.reports for f in r.findings)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["reports"] = [r.as_dict() for r in self.reports]
        return data


def _edges(longest: int) -> list[int]:
    edges = [0, 16]
    while edges[-1] < longest:
        edges.append(edges[-1] * 2)
    return edges


def _stats(values: list[int]) -> dict[str, int]:
    ordered = sorted(values) or [0]

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"min": ordered[0], "median": at(0.5), "p95": at(0.95), "max": ordered[-1]}


def lengths_of(split: str, encoded: list[Encoded]) -> Lengths:
    values = {"prompt": [], "answer": [], "total": []}
    for item in encoded:
        trained = sum(1 for x in item.labels if x != IGNORE_INDEX)
        values["answer"].append(trained)
        values["prompt"].append(len(item.labels) - trained)
        values["total"].append(len(item.labels))
    edges = _edges(max(values["total"], default=0))
    counts = {}
    for kind, vals in values.items():
        row = [0] * (len(edges) - 1)
        for v in vals:
            row[next(i for i in range(len(row)) if v <= edges[i + 1])] += 1
        counts[kind] = row
    total = sum(values["total"])
    share = sum(values["answer"]) / total if total else 0.0
    return Lengths(split, edges, counts, {k: _stats(v) for k, v in values.items()}, round(share, 4))


def segments_of(tokenizer: PreTrainedTokenizerBase, item: Encoded) -> list[Segment]:
    """The sample's text in runs of masked and trained tokens, decoded run by run."""
    segments: list[Segment] = []
    run: list[int] = []
    trained = False
    for token, label in zip(item.input_ids, item.labels):
        now = label != IGNORE_INDEX
        if run and now != trained:
            segments.append(Segment(tokenizer.decode(run, skip_special_tokens=False), trained))
            run = []
        run.append(token)
        trained = now
    if run:
        segments.append(Segment(tokenizer.decode(run, skip_special_tokens=False), trained))
    return segments


def inspect_data(
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    *,
    model_name: str,
    samples: int = 2,
    limit: int | None = None,
    kind: Rows = SAMPLES,
) -> Inspection:
    """``kind``: the rows the data is read as (pairs of answers: each side is shown and counted)."""
    found = build_splits(cfg, tokenizer, template, kind, limit=limit, require_samples=False)
    train = [seq for row in found.train for seq in kind.sequences(row)]
    evals = [seq for row in found.eval for seq in kind.sequences(row)]
    names = tuple(f"train {side}".rstrip() for side in kind.sides)
    end_tokens = sorted(tokenizer.convert_ids_to_tokens(sorted(template.end_token_ids)))
    shown = [
        RenderedSample(names[k % len(names)], item.origin, segments_of(tokenizer, item))
        for k, item in enumerate(train[: samples * len(names)])
    ]
    lengths = [lengths_of("train", train)] + ([lengths_of("eval", evals)] if evals else [])
    return Inspection(
        model_name, template.name, end_tokens, cfg.max_length, kind.settings(cfg).train_on, found.reports,
        lengths, shown, len(kind.sides) > 1,
    )
