"""``data inspect``, ``runs show`` and ``models``: look at data, runs and model families before and after training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from lorakit.commands.common import out, setup_logging
from lorakit.config_file import load_config


def data_inspect(
    target: Annotated[str, typer.Argument(help="A config (.yaml), or a data file, glob, folder or hub dataset.")],
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a key, e.g. --set data.format=dolly")] = [],
    json_out: Annotated[bool, typer.Option("--json", help="Print the same as machine-readable JSON.")] = False,
    samples: Annotated[int, typer.Option(help="Rendered samples to show.")] = 2,
    limit: Annotated[Optional[int], typer.Option(help="Encode only the first N samples of each split.")] = None,
    plain: Annotated[bool, typer.Option(help="Mark trained text with [[ ]] even in a terminal.")] = False,
) -> None:
    """The data doctor: shapes, template, counts with reasons, lengths, loss share and masked samples.

    Exits with 1 when it finds an error that would make training wrong.
    """
    setup_logging(False)
    from lorakit.config import DataSource
    from lorakit.data.inspection import inspect_data
    from lorakit.data.pair_dataset import rows_to_read
    from lorakit.data.view import print_inspection
    from lorakit.model.setup import training_setup
    from lorakit.train.methods import METHODS

    if target.endswith((".yaml", ".yml")):
        cfg = load_config(Path(target), set_)
    else:
        cfg = load_config(None, set_)
        local = Path(target).expanduser()
        cfg.data.train = [DataSource(path=str(local.resolve()) if local.exists() else target)]
    text = training_setup(cfg.model, cfg.data)  # as training sets it up: added tokens are one token each
    tokenizer, template = text.tokenizer, text.template
    kind = rows_to_read(cfg.data.train, cfg.data, METHODS[cfg.method].rows)
    result = inspect_data(cfg.data, tokenizer, template, model_name=cfg.model.name, samples=samples, limit=limit,
                          kind=kind)
    if json_out:
        print(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
    else:
        print_inspection(out, result, plain=plain or not out.is_terminal)
    if result.has_errors:
        raise typer.Exit(1)


def runs_show(
    folder: Annotated[Path, typer.Argument(help="A run folder (finished or still running).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Summarize a run: status, steps, losses, checkpoints, speed and memory."""
    from lorakit.train.run_status import describe_run

    info = describe_run(folder)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=f"run {folder}", show_header=False)
    for key, value in info.items():
        if key == "peak_rss_bytes" and value:
            key, value = "peak_rss", f"{value / 2**30:.2f} GiB"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        table.add_row(key, "-" if value is None else str(value))
    out.print(table)


def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The model families lorakit knows: LoRA target presets, end-of-turn tokens, embeddings, quirks."""
    from lorakit.families import FAMILIES, describe

    if as_json:
        print(json.dumps([describe(f) for f in FAMILIES], indent=2))
        return
    table = Table(title="model families (lora.target_modules: attention, attention+mlp or all-linear)")
    for column in ("family", "model_type", "attention", "+ mlp", "end of turn", "embeddings (modules_to_save)"):
        table.add_column(column)
    for f in FAMILIES:
        embeddings = f"{f.embedding} + {f.output}: {f.tie_text()}"
        table.add_row(f.name, ", ".join(f.model_types), ", ".join(f.attention), ", ".join(f.mlp),
                      " ".join(f.end_tokens), embeddings)
    out.print(table)
    for f in FAMILIES:
        out.print(f"[bold]{f.name}[/] ({f.examples})", highlight=False)
        for quirk in f.quirks:
            out.print(f"  - {quirk}", highlight=False, markup=False)
    out.print("lora.modules_to_save: [embeddings] trains both embeddings under the model's own names "
              "(tied ones as one shared matrix).", highlight=False)
    out.print("Any other model trains with all-linear and its tokenizer's own chat template.", highlight=False)


def config_show(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table instead.")] = False,
) -> None:
    """Every config key with its type, default and what it does, read from the schema itself."""
    from lorakit.config_file import reference, reference_markdown

    if markdown:
        print(reference_markdown(), end="")
        return
    keys = reference()
    table = Table(title="lorakit config keys (YAML sections; --set section.key=value)")
    for column in ("key", "type", "default", "what it does"):
        table.add_column(column, overflow="fold")
    for k in keys:
        table.add_row(k.name, k.type, k.default, k.description)
    out.print(table)
