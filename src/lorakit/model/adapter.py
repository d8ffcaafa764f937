"""A trained run's model: its base, fitted to the run's tokenizer, with the adapter on top.

Chat, eval, merge and export all load a run this way, so they all see the model training
saw: the same base (quantized again when the run was QLoRA), the same embedding size when
tokens were added, and the adapter peft saved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import ModelConfig
from lorakit.errors import LorakitError
from lorakit.model.loader import EMBEDDED_ALIASES, load_model, load_tokenizer, resolve_model_folder
from lorakit.model.quantization import is_quantized
from lorakit.model.tokens import fit_embeddings
from lorakit.run import RunFolder

log = logging.getLogger(__name__)


class AdapterError(LorakitError, ValueError):
    """Adapters that cannot share one base; the message says why."""


def load_run_base(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: str | None = None, dequantize: bool = False
) -> PreTrainedModel:
    """The run's base model. ``dequantize``: turn a 4/8-bit base back into plain layers holding
    exactly the quantized values, which is what the adapter was trained against (merging into
    the original full-precision weights instead would shift every output a little)."""
    base = load_model(resolve_model_folder(cfg), dtype or cfg.dtype, cfg.quantization, cfg.trust_remote_code)
    if dequantize and is_quantized(base):
        base = base.dequantize()
        # transformers drops the quantizer but leaves these flags, which peft reads to pick layer types.
        base.is_loaded_in_4bit = base.is_loaded_in_8bit = False
        log.info("dequantized the quantized base to %s", base.dtype)  # cfg.quantization is None when saved so
    fit_embeddings(base, tokenizer)
    return base


def load_run_model(
    run_dir: Path, cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: str | None = None,
    dequantize: bool = False, others: list[Path] | None = None,
) -> PeftModel:
    """The run's base with its adapter; ``others``: more runs' adapters on the same base, by folder name.

    With several, the first is active; ``model.set_adapter(name)`` switches without reloading.
    """
    base = load_run_base(cfg, tokenizer, dtype=dtype, dequantize=dequantize)
    if not others:
        model = PeftModel.from_pretrained(base, str(run_dir))
        log.info("loaded adapter from %s on %s", run_dir, cfg.name)
        return model
    names = adapter_names([run_dir, *others])
    model = PeftModel.from_pretrained(base, str(run_dir), adapter_name=names[0])
    for other, name in zip(others, names[1:]):
        check_same_base(run_dir, cfg, other, tokenizer)
        model.load_adapter(str(other), adapter_name=name)
    model.set_adapter(names[0])
    log.info("loaded adapters %s on %s", ", ".join(names), cfg.name)
    return model


def folder_name(path: Path, taken: Sequence[str] = (), peft_safe: bool = False) -> str:
    """An adapter given as a folder is named after it, made unique: what ``--use`` and ``/adapter`` take.

    ``peft_safe``: also usable as peft's own adapter name, which keys modules by it (no dots).
    """
    name = Path(path).resolve().name
    name = (name.replace(".", "_") if peft_safe else name) or "adapter"
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}_{n}", n + 1
    return unique


def adapter_names(run_dirs: list[Path]) -> list[str]:
    """Peft names for several runs' adapters on one base: their folder names, made unique."""
    names: list[str] = []
    for run_dir in run_dirs:
        names.append(folder_name(run_dir, names, peft_safe=True))
    return names


def _same_model(theirs: str, cfg: ModelConfig) -> bool:
    """Whether the base a bare peft adapter names is this one: the same spec, an alias of it, or its folder."""
    if theirs == cfg.name or {theirs, cfg.name} <= EMBEDDED_ALIASES:
        return True
    ours = Path(resolve_model_folder(cfg, weights=False)).resolve()
    return Path(theirs).expanduser().exists() and Path(theirs).expanduser().resolve() == ours


def check_same_base(first: Path, cfg: ModelConfig, other: Path, tokenizer: PreTrainedTokenizerBase,
                    same_template: bool = True) -> None:
    """Adapters share a base only if they were trained on the same model (and quantization) and vocabulary.

    A run folder says its base in its config; a bare peft adapter in ``base_model_name_or_path``.
    ``same_template``: their chat templates must match too (a merge writes only one).
    """
    run = RunFolder(Path(other))
    if run.is_run():
        theirs = run.read_config().model
        if (theirs.name, theirs.quantization) != (cfg.name, cfg.quantization):
            raise AdapterError(f"{other} was trained on {theirs.name} but {first} on {cfg.name}; adapters on one "
                               "base must come from runs on the same base model (and quantization)")
    else:
        named = json.loads(run.adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if named and not _same_model(named, cfg):
            raise AdapterError(f"{other} is an adapter for {named}, but {first} is on {cfg.name}; adapters on one "
                               "base must come from the same base model")
    if not run.has_tokenizer():
        return  # a bare adapter uses the base's tokenizer
    other_tokenizer = load_tokenizer(str(other))
    if other_tokenizer.get_vocab() != tokenizer.get_vocab() or (
        same_template and other_tokenizer.chat_template != tokenizer.chat_template
    ):
        raise AdapterError(f"{other} and {first} were trained with different tokenizers or chat templates; "
                           "they cannot share one base and one prompt format")
