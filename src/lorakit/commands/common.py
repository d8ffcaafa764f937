"""What every command shares: the two consoles, logging, the options several take, and how a command fails."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler

from lorakit.config import GenerationConfig
from lorakit.errors import LorakitError

err = Console(stderr=True, soft_wrap=True)
out = Console()

# Packages whose warnings and info logs are theirs to debug, not the user's to read.
THIRD_PARTY = ("transformers", "peft", "accelerate", "torch", "bitsandbytes", "datasets", "trl", "huggingface_hub")


class UsageError(LorakitError):
    """Options that do not go together, or cannot be read; the message says which."""


class State:
    """Set by ``lorakit --debug``, read by the error handler and the logging setup."""

    debug = False


def fail(message: str) -> NoReturn:
    raise UsageError(message)


def fail_options(error: ValidationError) -> NoReturn:
    """Options refused by a settings model: each named as on the command line (``--seed: ...``), on one line."""
    from lorakit.config_file import problems

    fail("; ".join(problems(error, option=True)))


def setup_logging(verbose: bool) -> None:
    """lorakit's own log at INFO when ``verbose``; third-party logs and warnings only with --debug."""
    logging.basicConfig(
        level=logging.INFO if verbose or State.debug else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("lorakit").setLevel(logging.DEBUG if State.debug else logging.INFO)
    from transformers.utils import logging as hf_logging

    if State.debug:
        return
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()  # transformers keeps its own handler; quiet it at the source
    if not verbose:
        hf_logging.disable_progress_bar()
    pattern = r"(%s)(\.|$)" % "|".join(THIRD_PARTY)
    warnings.filterwarnings("ignore", module=pattern)
    warnings.filterwarnings("ignore", category=FutureWarning)


DEFAULT_CACHE = Path("~/.cache/lorakit").expanduser()
CacheOpt = Annotated[Path, typer.Option(help="Cache of converted GGUF models.")]
BaseOpt = Annotated[bool, typer.Option("--base", help="Ignore the run's adapter: use the base model alone.")]
UseOpt = Annotated[Optional[str], typer.Option(help="Answer with this adapter (its NAME, or a run folder's name).")]

# Sampling options shared by generate, chat and serve (see GenerationConfig for what each does).
MaxNewOpt = Annotated[int, typer.Option(help="Longest answer, in tokens.")]
TempOpt = Annotated[float, typer.Option(help="0 is greedy.")]
TopPOpt = Annotated[float, typer.Option(help="Nucleus sampling: keep the likeliest tokens up to this mass.")]
TopKOpt = Annotated[int, typer.Option(help="Sample among the k likeliest tokens; 0: no limit.")]
MinPOpt = Annotated[float, typer.Option(help="Drop tokens below min-p x the top probability; 0: off.")]
RepOpt = Annotated[float, typer.Option(help="Above 1 discourages repeats; 1: off.")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Seed for sampling, for reproducible answers.")]
ContextOpt = Annotated[Optional[int], typer.Option(help="Prompt + answer limit in tokens; default: the model's.")]
SystemFileOpt = Annotated[Optional[Path], typer.Option(help="Read the system prompt from this file.")]
AdapterOpt = Annotated[
    list[str], typer.Option("--adapter", help="Another adapter on the same base: NAME=PATH, or a run folder named after "
                            "itself (repeatable).")
]
TargetArg = Annotated[str, typer.Argument(help="A run folder, or a model (name, hub id, folder or .gguf).")]


def generation(max_new_tokens: int, temperature: float, top_p: float, top_k: int, min_p: float,
               repetition_penalty: float, seed: Optional[int], context_length: Optional[int],
               batch_size: int = 1) -> GenerationConfig:
    try:
        return GenerationConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            repetition_penalty=repetition_penalty, seed=seed, context_length=context_length, batch_size=batch_size,
        )
    except ValidationError as e:
        fail_options(e)


def system_prompt(system: Optional[str], system_file: Optional[Path]) -> Optional[str]:
    if system is not None and system_file is not None:
        fail("give --system or --system-file, not both")
    if system_file is None:
        return system
    try:
        return system_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read the system prompt from {system_file}: {e}")
