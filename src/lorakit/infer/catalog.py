"""The models a user can pick by name: the base, and each adapter, all on one loaded base.

Several LoRA adapters share one copy of the base weights (peft's ``load_adapter``); which
one is active is a property of the model object, so switching it and generating with it
must happen under one lock, or two requests for different adapters would mix. Each adapter
keeps the tokenizer and chat template of the run that trained it, so every name renders
its prompts exactly as its training did. Every adapter is checked against the base before it
loads (``check_same_base``): one trained on another base model, quantization or vocabulary is
refused with the reason. ``chat``, ``generate``, ``eval`` and ``serve`` all open one of these.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import ModelConfig
from lorakit.errors import LorakitError
from lorakit.model.adapter import check_same_base, folder_name, load_run_base, load_run_model
from lorakit.model.loader import load_model, resolve_model_folder
from lorakit.model.setup import saved_setup
from lorakit.run import ADAPTER_CONFIG, CONFIG, SAVED_ADAPTER, TRAINED_BY, RunFolder, open_run, run_or_model
from lorakit.templates import ChatTemplate

log = logging.getLogger(__name__)

BASE = "base"
OWN_ADAPTER = "default"  # peft's name for the adapter a run folder loads with


@dataclass(frozen=True)
class Choice:
    name: str
    adapter: str | None  # peft's name for the adapter; None: the base alone
    tokenizer: PreTrainedTokenizerBase
    template: ChatTemplate


class CatalogError(LorakitError, ValueError):
    """The adapters asked for cannot share this base, or are named wrongly; the message says why."""


class UnknownModel(LorakitError, KeyError):
    """A name that is neither the base nor a loaded adapter."""


class Catalog:
    def __init__(self, model: PreTrainedModel, choices: dict[str, Choice], default: str):
        self.model = model
        self.choices = choices
        self.default = default
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self.choices)

    def get(self, name: str) -> Choice:
        if name not in self.choices:
            raise UnknownModel(name)
        return self.choices[name]

    def activate(self, name: str) -> Choice:
        """Make ``name`` the model that answers, for code that runs one thing at a time (no lock)."""
        choice = self.get(name)
        if choice.adapter is not None:
            self.model.set_adapter(choice.adapter, inference_mode=True)
        return choice

    @contextmanager
    def hold(self, name: str) -> Iterator[Choice]:
        """Hold the model with ``name`` active; every generation of a shared catalog runs inside one of these."""
        choice = self.get(name)
        with self._lock:
            if choice.adapter is not None:
                yield self.activate(name)
            elif isinstance(self.model, PeftModel):
                with self.model.disable_adapter():
                    yield choice
            else:
                yield choice


def parse_adapter_specs(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """``NAME=PATH`` strings from the command line, or a bare folder (named after it)."""
    pairs: list[tuple[str, Path]] = []
    for spec in specs:
        if Path(spec).expanduser().is_dir():
            path = Path(spec).expanduser()
            pairs.append((folder_name(path, [n for n, _ in pairs]), path))
            continue
        name, sep, path_text = spec.partition("=")
        if not sep or not name.strip() or not path_text.strip():
            raise CatalogError(f"--adapter {spec!r} must look like NAME=PATH, e.g. --adapter support=runs/support, "
                               "or be a run folder")
        pairs.append((name.strip(), Path(path_text.strip()).expanduser()))
    return pairs


def _tokenizer_for(path: Path, fallback: Choice) -> tuple[PreTrainedTokenizerBase, ChatTemplate]:
    """A run folder carries the tokenizer and template it was trained with; a bare adapter does not."""
    run = RunFolder(path)
    if run.has_tokenizer():
        text = saved_setup(path, run.read_config().data.think if run.is_run() else "keep")
        return text.tokenizer, text.template
    log.info("%s has no tokenizer; using the base's tokenizer and chat template for it", path)
    return fallback.tokenizer, fallback.template


def _open_base(target: str, cache_dir: Path, use_adapter: bool) -> tuple[ModelConfig, PreTrainedModel, Choice, bool]:
    """The model ``target`` names, its base's config, the base's choice, and whether a run's adapter is on it."""
    run = run_or_model(target, SAVED_ADAPTER if use_adapter else (CONFIG,))
    if run is not None:
        run_cfg = run.read_config()
        # The run's template as trained: its saved Jinja, with the run's think-block choice.
        text = saved_setup(target, run_cfg.data.think)
        if use_adapter:
            model = load_run_model(run.path, run_cfg.model, text.tokenizer)
        else:
            model = load_run_base(run_cfg.model, text.tokenizer)
        return run_cfg.model, model, Choice(BASE, None, text.tokenizer, text.template), use_adapter
    model_cfg = ModelConfig(name=target, cache_dir=cache_dir)
    source = resolve_model_folder(model_cfg)
    model = load_model(source, model_cfg.dtype)
    text = saved_setup(source)  # a base model named on the command line: no remote code
    return model_cfg, model, Choice(BASE, None, text.tokenizer, text.template), False


def open_catalog(
    target: str, cache_dir: Path, adapters: Sequence[tuple[str, Path]] = (), use_adapter: bool = True
) -> Catalog:
    """``target`` is a run folder written by ``lorakit train`` or any model spec ``model.name`` takes.

    A run folder's own adapter is named after the folder; ``adapters`` are more (name, folder)
    pairs on the same base. ``use_adapter=False`` leaves the run's own adapter off (``--base``).
    """
    for _, path in adapters:  # before the base loads
        open_run(path, (ADAPTER_CONFIG,), f"{TRAINED_BY} or an adapter folder saved by peft")
    base_cfg, model, base, has_own = _open_base(target, cache_dir, use_adapter)
    choices = {BASE: base}
    if has_own:
        own = folder_name(Path(target))
        choices[own] = Choice(own, OWN_ADAPTER, base.tokenizer, base.template)
    for index, (name, path) in enumerate(adapters):
        if name in choices:
            raise CatalogError(f"the model name {name!r} is taken ({', '.join(choices)}); pick another name")
        # Each adapter renders with its own template, so only the base and the vocabulary must match.
        check_same_base(Path(target), base_cfg, path, base.tokenizer, same_template=False)
        # peft keys modules by adapter name, so user names (which may hold dots) stay outside it.
        peft_name = f"adapter_{index}"
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=peft_name)
        else:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=peft_name)
        tokenizer, template = _tokenizer_for(path, base)
        choices[name] = Choice(name, peft_name, tokenizer, template)
        log.info("loaded adapter %s from %s", name, path)
    model.eval()
    # --base asks for the base alone; otherwise the run's own adapter, else the first one given.
    default = next((n for n in choices if n != BASE), BASE) if use_adapter else BASE
    return Catalog(model, choices, default)
