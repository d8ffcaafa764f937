"""The text side of a model, set up once for every command: its tokenizer and its chat template.

Training (and ``data inspect``, which must show what training encodes) starts from the base's
tokenizer with the configured tokens added, and the configured template. Everything after
training (chat, eval, serve, merge, export) reads a run folder's saved tokenizer, which holds
those tokens and the template the run trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig, ModelConfig
from lorakit.model.loader import load_tokenizer, resolve_model_folder
from lorakit.model.tokens import add_tokens
from lorakit.templates import ChatTemplate, resolve_template


@dataclass
class TextSetup:
    tokenizer: PreTrainedTokenizerBase
    template: ChatTemplate
    new_tokens: list[str] = field(default_factory=list)  # added to the vocabulary: their embeddings train


def training_setup(model: ModelConfig, data: DataConfig) -> TextSetup:
    """The tokenizer and template a run trains with: the base's tokenizer (only it, not the weights,
    is fetched yet) with ``model.special_tokens`` and ``model.pad_token`` added, and ``data.template``."""
    tokenizer = load_tokenizer(resolve_model_folder(model, weights=False), model.trust_remote_code)
    new_tokens = add_tokens(tokenizer, model.special_tokens, model.pad_token)
    return TextSetup(tokenizer, resolve_template(tokenizer, data.template, data.think), new_tokens)


def saved_setup(folder: Path | str, think: str = "keep") -> TextSetup:
    """A folder's own tokenizer and chat template: a run's as trained (``think``: its data.think), or a model's."""
    tokenizer = load_tokenizer(str(folder))
    return TextSetup(tokenizer, resolve_template(tokenizer, "auto", think))
