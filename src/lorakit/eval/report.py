"""Show and save a base-against-tuned comparison: a table on screen, eval.json and eval.md on disk."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lorakit.eval.compare import Comparison

_METRICS = (("exact match", "exact_match", True), ("answer loss", "answer_loss", False),
            ("answer perplexity", "perplexity", False))


def _rows(result: Comparison) -> list[tuple[str, str, str, str]]:
    rows = []
    for label, attr, pct in _METRICS:
        base = getattr(result.base, attr)
        tuned = getattr(result.tuned, attr) if result.tuned else None
        fmt = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.4f}")
        change = "" if tuned is None else (f"{100 * (tuned - base):+.1f} pts" if pct else f"{tuned - base:+.4f}")
        rows.append((label, fmt(base), fmt(tuned) if tuned is not None else "-", change))
    return rows


def print_comparison(console: Console, result: Comparison, examples: int = 3) -> None:
    table = Table(title=f"base vs tuned on {len(result.references)} held-out samples")
    for col in ("metric", "base", "tuned", "change"):
        table.add_column(col)
    for row in _rows(result):
        table.add_row(*row)
    console.print(table)
    if result.tuned is None:
        return
    for i in range(min(examples, len(result.references))):
        console.print(f"[bold]prompt:[/] {result.prompts[i]}", highlight=False)
        console.print(f"  reference: {result.references[i]}", highlight=False)
        console.print(f"  base:      {result.base.answers[i]}", highlight=False)
        console.print(f"  tuned:     {result.tuned.answers[i]}", highlight=False)


def write_reports(folder: Path, result: Comparison) -> None:
    (folder / "eval.json").write_text(json.dumps(result.as_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    lines = ["| metric | base | tuned | change |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in _rows(result)]
    (folder / "eval.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
