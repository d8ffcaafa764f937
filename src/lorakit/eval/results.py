"""Show and save a base-against-tuned comparison: a table on screen, eval.json and eval.md on disk.

eval.json holds every number and every answer so other tools can pick it up; eval.md is the
same table and examples for a person (or a pull request) to read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lorakit.eval.compare import Comparison, MetricRow, SampleResult, SideResult
from lorakit.outputs import write_text
from lorakit.run import EVAL_JSON, EVAL_MARKDOWN

_SCORES_0_100 = ("chrf", "bleu", "rouge_l")
_PERCENTS = ("exact_match", "preference_accuracy")


def _value(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key in _PERCENTS:
        return f"{value:.1f}%"
    return f"{value:.1f}" if key in _SCORES_0_100 else f"{value:.4f}"


def _change(row: MetricRow) -> str:
    change = row.change
    if change is None:
        return ""
    if row.key in _PERCENTS:
        return f"{change:+.1f} pts"
    return f"{change:+.1f}" if row.key in _SCORES_0_100 else f"{change:+.4f}"


def table_rows(result: Comparison) -> list[tuple[str, str, str, str]]:
    """metric, base, tuned, change: the same strings on screen and in eval.md."""
    return [(r.label, _value(r.key, r.base), _value(r.key, r.tuned), _change(r)) for r in result.metrics]


def _has_tuned(result: Comparison) -> bool:
    return any(r.tuned is not None for r in result.metrics)


def _title(result: Comparison) -> str:
    sides = "base vs tuned" if _has_tuned(result) else "base model"
    return f"{sides} on {len(result.samples)} held-out samples"


def _block(sample: SampleResult) -> str:
    """A sample as aligned 'label: text' lines; continuation lines are indented under the text."""
    parts = [("prompt", sample.prompt), ("reference", sample.reference)]
    parts += [(side, getattr(sample, side).answer) for side in ("base", "tuned") if getattr(sample, side)]
    lines = []
    for label, text in parts:
        first, *rest = text.splitlines() or [""]
        lines.append(f"{label + ':':<11}{first}".rstrip())
        lines += [(" " * 11 + line).rstrip() for line in rest]
    return "\n".join(lines)


def _heading(sample: SampleResult) -> str:
    if sample.base is None or sample.tuned is None:
        return sample.origin
    return f"{sample.origin} (chrF {sample.base.scores['chrf']:.1f} -> {sample.tuned.scores['chrf']:.1f})"


def _notes(result: Comparison) -> list[str]:
    notes = []
    for reason, origins in result.skipped.items():
        notes.append(f"not scored: {len(origins)} sample(s), {reason} (first: {origins[0]})")
    for reason, origins in result.loss_excluded.items():
        notes.append(f"no answer loss: {len(origins)} sample(s), {reason} (first: {origins[0]})")
    return notes


def print_comparison(console: Console, result: Comparison) -> None:
    table = Table(title=_title(result))
    for col in ("metric", "base", "tuned", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row, cells in zip(result.metrics, table_rows(result)):
        good = row.change is not None and row.change != 0 and (row.change > 0) == row.higher_is_better
        bad = row.change is not None and row.change != 0 and not good
        style = "green" if good else "red" if bad else ""
        table.add_row(*cells[:3], f"[{style}]{cells[3]}[/]" if style else cells[3])
    console.print(table)
    for note in _notes(result):
        console.print(note, style="yellow", markup=False, highlight=False)
    if result.examples:
        console.print("answers that changed most:" if _has_tuned(result) else "sample answers:", style="bold")
    for sample in (result.samples[i] for i in result.examples):
        console.print(f"-- {_heading(sample)}", style="dim", markup=False, highlight=False)
        console.print(_block(sample), markup=False, highlight=False)


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks inside, so answers cannot break out of it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def markdown(result: Comparison) -> str:
    gen = result.settings.get("generation", {})
    files = ", ".join(f"`{Path(f).name}`" for f in result.settings.get("data", [])) or "held-out data"
    decoding = "greedy" if not gen.get("temperature") else f"temperature {gen['temperature']}"
    lines = [
        f"# Evaluation: {_title(result)}", "",
        f"Samples from {files}; {decoding} decoding, at most {gen.get('max_new_tokens', '?')} new tokens.", "",
        "| metric | base | tuned | change |", "|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table_rows(result)]
    lines += [
        "",
        "Answer loss and perplexity are over the reference answers' tokens; chrF and BLEU are corpus "
        "scores (sacrebleu), exact match (normalized) and ROUGE-L F1 are means over samples.",
    ]
    lines += [f"- {note}" for note in _notes(result)]
    if result.examples:
        lines += ["", "## Answers that changed most" if _has_tuned(result) else "## Sample answers"]
    for number, sample in enumerate((result.samples[i] for i in result.examples), start=1):
        block = _block(sample)
        fence = _fence(block)
        lines += ["", f"### {number}. {_heading(sample)}", "", f"{fence}text", block, fence]
    return "\n".join(lines) + "\n"


def write_reports(folder: Path, result: Comparison) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / EVAL_JSON, folder / EVAL_MARKDOWN
    write_text(json_path, json.dumps(result.as_dict(), indent=2, ensure_ascii=False), "the evaluation")
    write_text(md_path, markdown(result), "the evaluation report")
    return json_path, md_path


def _side(raw: dict[str, Any] | None) -> SideResult | None:
    return SideResult(**raw) if raw is not None else None


def read_report(folder: Path) -> Comparison:
    """Read eval.json back (to show it again, or to compare runs)."""
    raw = json.loads((folder / EVAL_JSON).read_text(encoding="utf-8"))
    metrics = [MetricRow(**{k: v for k, v in m.items() if k != "change"}) for m in raw["metrics"]]
    samples = [SampleResult(**{**s, "base": _side(s["base"]), "tuned": _side(s["tuned"])}) for s in raw["samples"]]
    return Comparison(metrics, samples, raw["examples"], raw["skipped"], raw["loss_excluded"], raw["settings"])
