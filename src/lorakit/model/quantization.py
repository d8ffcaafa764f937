"""Quantized loading for QLoRA: the config section turned into bitsandbytes settings.

bitsandbytes is an optional extra (``pip install 'lorakit[qlora]'``); the message says so
when it is missing instead of failing deep inside transformers. Version 0.50 runs its 4-bit and
8-bit layers on CPU too, which is how the tests exercise QLoRA on a machine with no GPU.
"""

from __future__ import annotations

import importlib.util

from transformers import BitsAndBytesConfig, PreTrainedModel

from lorakit.config import QuantizationConfig
from lorakit.model.dtype import resolve_dtype


class QuantizationUnavailableError(ImportError):
    """bitsandbytes is not installed; the message says how to install it."""


def require_bitsandbytes() -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnavailableError(
            "model.quantization needs bitsandbytes, which is not installed. Install it with:\n"
            "  pip install 'lorakit[qlora]'   (or: pip install bitsandbytes)"
        )


def bnb_config(cfg: QuantizationConfig, model_dtype: str) -> BitsAndBytesConfig:
    """The bitsandbytes settings for ``cfg``; compute dtype 'auto' follows model.dtype."""
    require_bitsandbytes()
    compute = resolve_dtype(model_dtype if cfg.compute_dtype == "auto" else cfg.compute_dtype,
                            "model.quantization.compute_dtype")
    if cfg.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def is_quantized(model: PreTrainedModel) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
