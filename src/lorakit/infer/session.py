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
from lorakit.data.templates import ChatTemplate, resolve_template
from lorakit.model.adapter import load_run_base, load_run_model
from lorakit.model.loader import load_model, load_tokenizer, resolve_model_folder

log = logging.getLogger(__name__)

RUN_CONFIG = "lorakit.yaml"


@dataclass
class Session:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    template: ChatTemplate
    has_adapter: bool

    def base_only(self) -> AbstractContextManager:
        """Temporarily switch the adapter off, to compare tuned against base on one loaded model."""
        if self.has_adapter and isinstance(self.model, PeftModel):
            return self.model.disable_adapter()
        return nullcontext()


def is_run_dir(target: str | Path) -> bool:
    return (Path(target) / RUN_CONFIG).is_file()


def open_session(target: str, cache_dir: Path, use_adapter: bool = True) -> Session:
    """``target`` is a run folder written by ``lorakit train`` or any model spec ``model.name`` takes."""
    if is_run_dir(target):
        run_cfg = read_saved_config(Path(target) / RUN_CONFIG)
        tokenizer = load_tokenizer(str(target))
        template = resolve_template(tokenizer, "auto")
        if use_adapter:
            model = load_run_model(Path(target), run_cfg.model, tokenizer)
        else:
            model = load_run_base(run_cfg.model, tokenizer)
        model.eval()
        return Session(model, tokenizer, template, has_adapter=use_adapter)
    model_cfg = ModelConfig(name=target, cache_dir=cache_dir)
    source = resolve_model_folder(model_cfg)
    model = load_model(source, model_cfg.dtype)
    model.eval()
    tokenizer = load_tokenizer(source)
    return Session(model, tokenizer, resolve_template(tokenizer, "auto"), has_adapter=False)
