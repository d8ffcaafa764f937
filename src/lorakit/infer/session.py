"""One choice inside a catalog: the model that answers, with its tokenizer and template.

``generate`` and ``eval`` answer with one model at a time; a session is the catalog they
opened plus the name they answer with. A run folder carries its resolved config and a
tokenizer whose chat template is the one it was trained with, so inference renders
conversations exactly as training did.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.infer.catalog import BASE, Catalog, CatalogError, Choice, open_catalog
from lorakit.templates import ChatTemplate


@dataclass
class Session:
    catalog: Catalog
    name: str

    @property
    def choice(self) -> Choice:
        return self.catalog.get(self.name)

    @property
    def model(self) -> PreTrainedModel:
        return self.catalog.model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.choice.tokenizer

    @property
    def template(self) -> ChatTemplate:
        return self.choice.template

    @property
    def has_adapter(self) -> bool:
        return self.choice.adapter is not None

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the adapters loaded on the base, when more than one is."""
        names = tuple(n for n in self.catalog.names() if n != BASE)
        return names if len(names) > 1 else ()

    def use(self, name: str) -> None:
        """Make adapter ``name`` the one that answers (several are loaded on one base)."""
        if name == BASE or name not in self.catalog.choices:
            loaded = ", ".join(self.adapters) or "one, unnamed"
            raise CatalogError(f"no adapter {name!r}; loaded: {loaded}")
        self.catalog.activate(name)
        self.name = name

    def base_only(self) -> AbstractContextManager:
        """Temporarily switch the adapter off, to compare tuned against base on one loaded model."""
        if self.has_adapter and isinstance(self.model, PeftModel):
            return self.model.disable_adapter()
        return nullcontext()


def open_session(target: str, cache_dir: Path, use_adapter: bool = True,
                 adapters: list[tuple[str, Path]] | None = None) -> Session:
    """The catalog of ``target`` (see ``open_catalog``), answering with its default model.

    ``adapters``: more (name, folder) pairs on the same base, as ``--adapter NAME=PATH`` gives them.
    """
    catalog = open_catalog(target, cache_dir, adapters or [], use_adapter=use_adapter)
    return Session(catalog, catalog.default)


def session_of(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
               has_adapter: bool = True) -> Session:
    """A session on a model already in memory: its active adapter on (``has_adapter``), or the model alone."""
    base = Choice(BASE, None, tokenizer, template)
    if not has_adapter:
        return Session(Catalog(model, {BASE: base}, BASE), BASE)
    tuned = Choice("tuned", getattr(model, "active_adapter", None) or "default", tokenizer, template)
    return Session(Catalog(model, {BASE: base, "tuned": tuned}, "tuned"), "tuned")
