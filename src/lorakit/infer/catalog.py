"""The models a user can pick by name: the base, and each adapter, all on one loaded base.

Several LoRA adapters share one copy of the base weights (peft's ``load_adapter``); which
one is active is a property of the model object, so switching it and generating with it
must happen under one lock, or two requests for different adapters would mix. Each adapter
keeps the tokenizer and chat template of the run that trained it, so every name renders
its prompts exactly as its training did.
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

from lorakit.config import read_saved_config
from lorakit.templates import ChatTemplate, resolve_template
from lorakit.infer.session import RUN_CONFIG, is_run_dir, open_session
from lorakit.model.loader import load_tokenizer

log = logging.getLogger(__name__)

BASE = "base"


@dataclass(frozen=True)
class Choice:
    name: str
    adapter: str | None  # peft's name for the adapter; None: the base alone
    tokenizer: PreTrainedTokenizerBase
    template: ChatTemplate


class UnknownModel(KeyError):
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

    @contextmanager
    def use(self, name: str) -> Iterator[Choice]:
        """Hold the model with ``name`` active; every generation runs inside one of these."""
        choice = self.get(name)
        with self._lock:
            if choice.adapter is not None:
                self.model.set_adapter(choice.adapter, inference_mode=True)
                yield choice
            elif isinstance(self.model, PeftModel):
                with self.model.disable_adapter():
                    yield choice
            else:
                yield choice


def parse_adapter_specs(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """``name=path`` strings from the command line."""
    pairs = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--adapter {spec!r} must look like NAME=PATH, e.g. --adapter support=runs/support")
        pairs.append((name.strip(), Path(path.strip()).expanduser()))
    return pairs


def _tokenizer_for(path: Path, fallback: Choice) -> tuple[PreTrainedTokenizerBase, ChatTemplate]:
    """A run folder carries the tokenizer and template it was trained with; a bare adapter does not."""
    if (path / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(str(path))
        think = read_saved_config(path / RUN_CONFIG).data.think if is_run_dir(path) else "keep"
        return tokenizer, resolve_template(tokenizer, "auto", think)
    log.info("%s has no tokenizer; using the base's tokenizer and chat template for it", path)
    return fallback.tokenizer, fallback.template


def open_catalog(
    target: str, cache_dir: Path, adapters: Sequence[tuple[str, Path]] = (), use_adapter: bool = True
) -> Catalog:
    """``target`` as for ``open_session``; a run folder's own adapter is named after the folder."""
    session = open_session(target, cache_dir, use_adapter=use_adapter)
    model = session.model
    base = Choice(BASE, None, session.tokenizer, session.template)
    choices = {BASE: base}
    if session.has_adapter:
        own = Path(target).resolve().name
        choices[own] = Choice(own, "default", session.tokenizer, session.template)
    for index, (name, path) in enumerate(adapters):
        if name in choices:
            raise ValueError(f"the model name {name!r} is taken ({', '.join(choices)}); pick another name")
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{path} holds no adapter (no adapter_config.json); give a run folder written by "
                "`lorakit train` or a folder saved by peft"
            )
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
    default = next((n for n in choices if n != BASE), BASE)
    return Catalog(model, choices, default)
