"""Where the base model and its tokenizer come from.

A model spec is the embedded SmolLM2, a local transformers folder, a ``.gguf`` file, or a
hub name that must already be in the local cache (this product runs offline by default).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import EMBEDDED_MODEL, ModelConfig
from lorakit.model.gguf_cache import ModelNotFoundError, converted_folder, embedded_gguf

log = logging.getLogger(__name__)

_EMBEDDED_ALIASES = {EMBEDDED_MODEL, "embedded", "smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_folder(cfg: ModelConfig) -> str:
    """Turn the configured model name into something ``from_pretrained`` reads offline."""
    name = cfg.name
    if name in _EMBEDDED_ALIASES:
        return str(converted_folder(embedded_gguf(), cfg.cache_dir))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        return str(converted_folder(path, cfg.cache_dir))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a transformers model folder (no config.json in it)")
        return str(path)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # a hub id; from_pretrained is called with local_files_only=True
    raise ModelNotFoundError(
        f"model '{name}' not found: give a local model folder, a .gguf file, "
        f"'{EMBEDDED_MODEL}', or a hub name already downloaded to the local cache"
    )


def _from_pretrained(loader, source: str, **kwargs):
    try:
        return loader.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError as err:
        raise ModelNotFoundError(
            f"could not load '{source}' offline: {err}\n"
            "lorakit does not download at run time. Download the model once where the network allows "
            "(e.g. `hf download NAME`) so it is in the Hugging Face cache, or give a local folder."
        ) from None


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    tokenizer = _from_pretrained(AutoTokenizer, source)
    if tokenizer.pad_token_id is None:
        # Padding positions are excluded from the loss by their labels, never by token id,
        # so reusing EOS as the pad token is safe here.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: str, dtype: str) -> PreTrainedModel:
    torch_dtype = _DTYPES.get(dtype, "auto")
    model = _from_pretrained(AutoModelForCausalLM, source, dtype=torch_dtype)
    return model


def load_base(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    source = resolve_model_folder(cfg)
    log.info("loading base model from %s", source)
    return load_model(source, cfg.dtype), load_tokenizer(source)
