"""How an inspection looks: colour in a terminal, brackets in plain text.

Trained text is green in a terminal and wrapped in [[ ]] in plain text, so the difference
survives copying into an issue or a log file; masked text is left as it is.
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lorakit.data.inspection import Inspection, Lengths, RenderedSample

OPEN, CLOSE = "[[", "]]"
_LEVEL_STYLE = {"error": "bold red", "warning": "yellow", "note": "cyan"}


def _length_table(lengths: Lengths, plain: bool) -> Table:
    table = Table(box=box.ASCII if plain else box.SIMPLE)
    table.add_column(f"{lengths.split} tokens")
    for kind in lengths.counts:
        table.add_column(kind, justify="right")
    for i in range(len(lengths.edges) - 1):
        table.add_row(
            f"{lengths.edges[i] + (1 if i else 0)}-{lengths.edges[i + 1]}",
            *(str(lengths.counts[kind][i]) for kind in lengths.counts),
        )
    for stat in ("min", "median", "p95", "max"):
        table.add_row(stat, *(str(lengths.stats[kind][stat]) for kind in lengths.counts), style="dim")
    return table


def _sample_text(sample: RenderedSample, plain: bool) -> Text:
    text = Text()
    for seg in sample.segments:
        if plain:
            text.append(f"{OPEN}{seg.text}{CLOSE}" if seg.trained else seg.text)
        else:
            text.append(seg.text, style="bold green" if seg.trained else "dim")
    return text


def print_inspection(console: Console, result: Inspection, plain: bool) -> None:
    def say(line: str, style: str | None = None) -> None:
        console.print(Text(line, style=None if plain else style), soft_wrap=True)

    loss_on = f"each side's final answer, chosen and rejected ({result.train_on})" if result.pairs else result.train_on
    say(f"model {result.model}; template '{result.template}' (end tokens: {', '.join(result.end_tokens)}); "
        f"max_length {result.max_length}; loss on {loss_on}", "bold")
    for report in result.reports:
        for line in report.lines():
            level = line.strip().split(":", 1)[0]
            say(line, _LEVEL_STYLE.get(level))
    for lengths in result.lengths:
        say(f"{lengths.split}: {lengths.loss_share:.1%} of tokens carry loss; tokens per sample:", "bold")
        console.print(_length_table(lengths, plain))
    if result.samples:
        legend = f"trained text is in {OPEN} {CLOSE}" if plain else "trained text is green, masked text dim"
        say(f"samples as the model sees them ({legend}):", "bold")
    for sample in result.samples:
        side = sample.split.removeprefix("train").strip()  # a pair's side: chosen or rejected
        say(f"--- {sample.origin}{f' ({side})' if side else ''}", "bold")
        console.print(_sample_text(sample, plain), soft_wrap=True)
