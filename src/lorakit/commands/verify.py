"""``verify``: the run's hand-off checked on its own base, adapter, held-out data and exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lorakit.commands.common import err, out, setup_logging

COLOURS = {"pass": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


def verify(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by lorakit train.")],
    data: Annotated[Optional[list[Path]], typer.Option(
        help="Held-out conversations (repeatable); default: the run's eval split, else a few training ones.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many conversations to check on.")] = 8,
    gguf: Annotated[list[Path], typer.Option(
        "--gguf", help="A GGUF exported from the run (repeatable): llama.cpp and its Modelfile are checked too. "
                       "Default: the GGUFs `lorakit export gguf` wrote from the run.")] = [],
    server: Annotated[bool, typer.Option(help="Start the server in process and compare its answers.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
) -> None:
    """Check what chat, generate, eval, serve, merge, llama.cpp and Ollama see against what training saw.

    One row per check (pass, warn, fail or skip), written to RUN/verify.json; exits with 1 when one fails.
    """
    setup_logging(False)
    from lorakit.verify.run import verify_run

    def progress(check) -> None:
        if not as_json:
            err.print(f"  {check.name}: {check.verdict} ({check.seconds:.1f} s)", highlight=False)

    report = verify_run(run_dir, data, limit, gguf or None, server=server, progress=progress)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        print_report(report)
    if report.failed:
        raise typer.Exit(1)


def print_report(report) -> None:
    table = Table(title=f"verify {report.run} on {report.prompts}", show_lines=True)
    for column in ("check", "verdict", "what was compared", "s"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        colour = COLOURS.get(check.verdict, "")
        text = escape(check.summary)
        if check.mismatch is not None:
            text += "\n" + escape("\n".join(check.mismatch.lines()))
        table.add_row(check.name, f"[{colour}]{check.verdict}[/]", text, f"{check.seconds:.1f}")
    out.print(table)
    err.print(f"wrote {Path(report.run) / 'verify.json'}", highlight=False)
