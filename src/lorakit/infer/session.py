"""Load something to talk to: a finished run (base + adapter) or a base model alone.

A run folder carries its resolved config and a tokenizer whose chat template is the one it
was trained with, so inference renders conversations exactly as training did.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import ModelConfig, read_saved_config
from lorakit.templates import ChatTemplate, resolve_template
from lorakit.model.adapter import adapter_names, load_run_base, load_run_model
from lorakit.model.loader import load_model, load_tokenizer, resolve_model_folder

log = logging.getLogger(__name__)

RUN_CONFIG = "lorakit.yaml"


@dataclass
class Session:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    template: ChatTemplate
    has_adapter: bool
    adapters: tuple[str, ...] = ()  # names of the adapters loaded on the base, when more than one

    def use(self, name: str) -> None:
        """Make adapter ``name`` the one that answers (several are loaded on one base)."""
        if name not in self.adapters:
            raise ValueError(f"no adapter {name!r}; loaded: {', '.join(self.adapters) or 'one, unnamed'}")
        self.model.set_adapter(name)

    def base_only(self) -> AbstractContextManager:
        """Temporarily switch the adapter off, to compare tuned against base on one loaded model."""
        if self.has_adapter and isinstance(self.model, PeftModel):
            return self.model.disable_adapter()
        return nullcontext()


def is_run_dir(target: str | Path) -> bool:
    return (Path(target) / RUN_CONFIG).is_file()


def open_session(target: str, cache_dir: Path, use_adapter: bool = True, others: list[str] | None = None) -> Session:
    """``target`` is a run folder written by ``lorakit train`` or any model spec ``model.name`` takes.

    ``others``: more run folders whose adapters load on the same base, to switch between.
    """
    if is_run_dir(target):
        run_cfg = read_saved_config(Path(target) / RUN_CONFIG)
        tokenizer = load_tokenizer(str(target))
        # The run's template as trained: its saved Jinja, with the run's think-block choice.
        template = resolve_template(tokenizer, "auto", run_cfg.data.think)
        extra = [Path(o) for o in others or []]
        if use_adapter:
            model = load_run_model(Path(target), run_cfg.model, tokenizer, others=extra)
        else:
            model = load_run_base(run_cfg.model, tokenizer)
        model.eval()
        names = tuple(adapter_names([Path(target), *extra])) if extra and use_adapter else ()
        return Session(model, tokenizer, template, has_adapter=use_adapter, adapters=names)
    if others:
        raise ValueError(f"--adapter needs a run folder as the first argument; {target} is a base model")
    model_cfg = ModelConfig(name=target, cache_dir=cache_dir)
    source = resolve_model_folder(model_cfg)
    model = load_model(source, model_cfg.dtype)
    model.eval()
    tokenizer = load_tokenizer(source)  # a base model named on the command line: no remote code
    return Session(model, tokenizer, resolve_template(tokenizer, "auto"), has_adapter=False)
