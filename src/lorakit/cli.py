"""The ``lorakit`` command. The configuration is built here and nowhere else.

Every command runs under one error handler: a :class:`~lorakit.errors.LorakitError` (bad
input, a refused setting) is printed as one line, with its traceback only under
``lorakit --debug``; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lorakit.commands import export, infer, look, ui, verify
from lorakit.commands.common import State, err, out, setup_logging
from lorakit.config_file import load_config
from lorakit.errors import LorakitError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune, chat with and evaluate LoRA adapters.")


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show tracebacks of lorakit's errors, and third-party warnings and logs.")] = False,
) -> None:
    State.debug = debug


def _handled(command: Callable) -> Callable:
    """Run ``command``; a LorakitError becomes one line on stderr and the error's exit code."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LorakitError as e:
            if State.debug:
                err.print("".join(traceback.format_exception(e)).rstrip(), markup=False, highlight=False)
            # The message is text, not markup: "--set data.train=[a, b]" must print its brackets.
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(e.exit_code) from None

    return run


def _register(group: typer.Typer, command: Callable, name: str | None = None) -> None:
    group.command(name)(_handled(command))


@app.command()
@_handled
def train(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config; defaults apply to what it leaves out.")] = None,
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a key, e.g. --set lora.rank=8")] = [],
    resume: Annotated[
        Optional[str], typer.Option(help="Continue a killed run: alone, from its latest complete checkpoint; or give one.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Delete the run already in output_dir (adapter, checkpoints, metrics) and start afresh.")
    ] = False,
    nproc: Annotated[
        int, typer.Option(help="Data-parallel processes on this machine, started through torchrun (gloo on CPU, NCCL on GPUs).")
    ] = 1,
    verbose: bool = True,
) -> None:
    """Fine-tune a LoRA adapter; writes runs/<name>/ (adapter, tokenizer, config, metrics).

    One run at a time per output folder: --resume continues the run there, --overwrite replaces it.

    Ctrl-C or SIGTERM saves a checkpoint first, and says how to resume.
    """
    setup_logging(verbose)
    cfg = load_config(config, set_)
    from lorakit.train import recipe

    from lorakit.train.distributed import LaunchInterrupted, is_main_process, launched

    if nproc != 1:
        try:
            recipe.launch(cfg, nproc, _child_command(config, set_, verbose), resume, overwrite)
        except LaunchInterrupted as e:
            err.print(f"[yellow]{e}. Continue with: {_resume_command(config, set_, nproc)}[/]", highlight=False)
            raise typer.Exit(e.exit_code) from None
        return
    try:
        summary = recipe.run(cfg, resume=resume, overwrite=overwrite)
    except recipe.TrainingInterrupted as e:
        if is_main_process():  # one line for the run, not one per rank
            again = "the same launch with --resume" if launched() else _resume_command(config, set_)
            err.print(f"[yellow]{e}. Continue with: {again}[/]", highlight=False)
        raise typer.Exit(128 + e.signum) from None  # the shell's convention: 130 after Ctrl-C, 143 after SIGTERM
    if not is_main_process():
        return
    table = Table(title=f"run {cfg.name} -> {cfg.output_dir}", show_header=False)
    for key in ("steps", "train_loss", "eval_loss", "train_seconds", "tokens_seen", "loss_tokens_seen",
                "tokens_per_second", "loss_tokens_per_second", "precision"):
        value = summary[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) and key.endswith("loss") else str(value))
    trainable, total = summary.trainable_parameters, summary.total_parameters
    table.add_row("trainable_parameters", f"{trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
    table.add_row("model_memory", f"{summary.memory_footprint_bytes / 2**20:.1f} MiB")
    table.add_row("peak_rss", f"{summary.peak_rss_bytes / 2**30:.2f} GiB")
    table.add_row("compile", _compile_line(summary))
    if summary.cuda_peak_reserved_bytes:
        table.add_row("cuda_peak_reserved", f"{summary.cuda_peak_reserved_bytes / 2**30:.2f} GiB")
    out.print(table)
    if cfg.eval.at_end:  # the run scored base against tuned on the held-out data (eval.json)
        from lorakit.eval.results import print_comparison, read_report

        print_comparison(out, read_report(cfg.output_dir))


def _compile_line(summary) -> str:
    """train.compile's outcome: from which step, at what cost, or why not."""
    if summary.compiled_from_step is None:
        return f"no ({summary.compile_note})"
    cost = f", {summary.compile_seconds:.1f} s to compile" if summary.compile_seconds is not None else ""
    return f"from step {summary.compiled_from_step + 1}{cost}"


def _resume_command(config: Path | None, set_: list[str], nproc: int = 1) -> str:
    """The command that continues this run: the same config, overrides and processes, plus --resume."""
    import shlex

    words = ["lorakit", "train", *([str(config)] if config is not None else [])]
    words += [w for assignment in set_ for w in ("--set", assignment)]
    words += ["--nproc", str(nproc)] if nproc != 1 else []
    return shlex.join([*words, "--resume"])


def _child_command(config: Path | None, set_: list[str], verbose: bool) -> list[str]:
    """This ``lorakit train`` as each of several processes runs it (the recipe adds --resume and --overwrite)."""
    child = [*(["--debug"] if State.debug else []), "train", *([str(config)] if config is not None else [])]
    child += [f"--set={assignment}" for assignment in set_]
    return child + ([] if verbose else ["--no-verbose"])


for _command in (infer.generate, infer.chat, infer.serve):
    _register(app, _command)
_register(app, infer.evaluate, "eval")
_register(app, export.merge)
_register(app, verify.verify)
_register(app, ui.ui)

export_app = typer.Typer(no_args_is_help=True, help="Export a run or a model folder for other runtimes.")
app.add_typer(export_app, name="export")
_register(export_app, export.export_gguf, "gguf")

data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Look at training data before training.")
app.add_typer(data_app, name="data")
_register(data_app, look.data_inspect, "inspect")

runs_app = typer.Typer(no_args_is_help=True, help="Look at training runs.")
app.add_typer(runs_app, name="runs")
_register(runs_app, look.runs_show, "show")
_register(app, look.models)

config_app = typer.Typer(no_args_is_help=True, help="The configuration's keys, defaults and what each does.")
app.add_typer(config_app, name="config")
_register(config_app, look.config_show, "show")


def _optional_resume_value(argv: list[str]) -> list[str]:
    """Let ``--resume`` stand alone (meaning the latest checkpoint) as well as take a path."""
    fixed = list(argv)
    for i, arg in enumerate(fixed):
        if arg == "--resume" and (i + 1 == len(fixed) or fixed[i + 1].startswith("-")):
            fixed[i] = "--resume=latest"
    return fixed


def main() -> None:  # pragma: no cover - console entry point
    sys.argv[1:] = _optional_resume_value(sys.argv[1:])
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
