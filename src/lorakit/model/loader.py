"""Where the base model and its tokenizer come from.

A model spec is the embedded SmolLM2, a local transformers folder, a ``.gguf`` file, or a
hub name that must already be in the local cache (this product runs offline by default).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import EMBEDDED_MODEL, ModelConfig, QuantizationConfig
from lorakit.model.dtype import resolve_dtype
from lorakit.model.gguf_cache import ModelNotFoundError, converted_folder, embedded_gguf
from lorakit.model.quantization import (check_4bit_cpu_shapes, checkpoint_quantization, cpu_4bit_kernel_repacks,
                                        quantized_loading)

log = logging.getLogger(__name__)

_EMBEDDED_ALIASES = {EMBEDDED_MODEL, "embedded", "smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"}


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


def load_model(source: str, dtype: str, quantization: QuantizationConfig | None = None) -> PreTrainedModel:
    """Load the base: in ``dtype`` (checked against the hardware), quantized when asked or saved so.

    On a GPU accelerate places the layers (``device_map="auto"``); on a CPU everything stays put.
    """
    kwargs: dict = {"dtype": resolve_dtype(dtype)}
    if torch.cuda.is_available():
        kwargs["device_map"] = "auto"
    config = _from_pretrained(AutoConfig, source)
    quantized = quantized_loading(config, quantization, dtype)  # asked for, or saved quantized
    if quantized:
        if (quantization or checkpoint_quantization(config)).bits == 4 and cpu_4bit_kernel_repacks():
            check_4bit_cpu_shapes(config, source)
        kwargs.update(quantized)
        kwargs.setdefault("device_map", "cpu")  # bitsandbytes quantizes while placing the weights
    return _from_pretrained(AutoModelForCausalLM, source, **kwargs)


def load_base(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    source = resolve_model_folder(cfg)
    log.info("loading base model from %s", source)
    return load_model(source, cfg.dtype, cfg.quantization), load_tokenizer(source)
