"""What every command shares: the two consoles, logging, the options several take, and how a command fails."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler

from lorakit.config import GenerationConfig, ModelConfig
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


DEFAULT_CACHE = ModelConfig().cache_dir
CacheOpt = Annotated[Path, typer.Option(help="Cache of converted GGUF models.")]
BaseOpt = Annotated[bool, typer.Option("--base", help="Ignore the run's adapter: use the base model alone.")]
UseOpt = Annotated[Optional[str], typer.Option(help="Answer with this adapter (its NAME, or a run folder's name).")]

# The sampling options of generate, chat and serve are GenerationConfig's fields: each option's
# help is its field's description and its default the field's (GEN.<field>), so the command line
# and a config's generation section cannot drift apart (tests/test_cli_options.py holds them to it).
GEN = GenerationConfig()


def _sampling(field: str) -> Any:
    return typer.Option(help=GenerationConfig.model_fields[field].description)


MaxNewOpt = Annotated[int, _sampling("max_new_tokens")]
TempOpt = Annotated[float, _sampling("temperature")]
TopPOpt = Annotated[float, _sampling("top_p")]
TopKOpt = Annotated[int, _sampling("top_k")]
MinPOpt = Annotated[float, _sampling("min_p")]
RepOpt = Annotated[float, _sampling("repetition_penalty")]
SeedOpt = Annotated[Optional[int], _sampling("seed")]
ContextOpt = Annotated[Optional[int], _sampling("context_length")]
BatchOpt = Annotated[int, _sampling("batch_size")]
SystemFileOpt = Annotated[Optional[Path], typer.Option(help="Read the system prompt from this file.")]
AdapterOpt = Annotated[
    list[str], typer.Option("--adapter", help="Another adapter on the same base: NAME=PATH, or a run folder named after "
                            "itself (repeatable).")
]
TargetArg = Annotated[str, typer.Argument(help="A run folder, or a model (name, hub id, folder or .gguf).")]


def generation(*, batch_size: int = 1, **sampling: Any) -> GenerationConfig:
    """The sampling options given, by name, as a GenerationConfig (the rest at its defaults), refused as a config's
    would be; one prompt per pass unless ``batch_size`` says otherwise (chat and serve answer one at a time)."""
    try:
        return GenerationConfig(batch_size=batch_size, **sampling)
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
