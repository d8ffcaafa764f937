"""Quantized loading for QLoRA: the config section turned into bitsandbytes settings.

bitsandbytes is an optional extra (``pip install 'lorakit[qlora]'``); the message says so
when it is missing instead of failing deep inside transformers. Version 0.50 runs its 4-bit and
8-bit layers on CPU too, which is how the tests exercise QLoRA on a machine with no GPU.
"""

from __future__ import annotations

import importlib.util

import torch
from transformers import BitsAndBytesConfig, PretrainedConfig, PreTrainedModel

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


# bitsandbytes' CPU 4-bit kernel for CPUs with AVX512-BF16 repacks each weight the first time a
# layer runs without gradients (evaluation, generation). The repacking splits the output rows into
# blocks of 32 and the input columns into the 4-bit blocks of 64, and it asserts (or fails on a
# reshape) when a layer's shape does not divide. Real models always divide; tiny ones may not.
CPU_4BIT_ROW_BLOCK = 32
CPU_4BIT_COLUMN_BLOCK = 64


class QuantizationShapeError(ValueError):
    """Some layers have shapes the 4-bit CPU kernel of this machine cannot take; the message names them."""


def cpu_4bit_kernel_repacks() -> bool:
    """True where bitsandbytes would repack 4-bit weights for its AVX512-BF16 CPU kernel."""
    if torch.cuda.is_available():
        return False
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def check_4bit_cpu_shapes(config: PretrainedConfig, source: str) -> None:
    """Refuse before loading when a layer to be quantized has a shape this CPU's 4-bit kernel refuses.

    The layers are read from a weightless (meta) copy of the model, and the ones bitsandbytes
    leaves unquantized (the output head and what is tied to it) are left out, as it does.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.quantizers.base import get_keys_to_not_convert

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    skipped = get_keys_to_not_convert(skeleton)
    bad = [
        f"{name} ({module.in_features} -> {module.out_features})"
        for name, module in skeleton.named_modules()
        if isinstance(module, torch.nn.Linear)
        and not any(name == s or name.endswith("." + s) or name.startswith(s + ".") for s in skipped)
        and (module.out_features % CPU_4BIT_ROW_BLOCK or module.in_features % CPU_4BIT_COLUMN_BLOCK)
    ]
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise QuantizationShapeError(
            f"{source}: 4-bit quantization on this CPU (bitsandbytes' AVX512-BF16 kernel) needs every quantized "
            f"layer's outputs to be a multiple of {CPU_4BIT_ROW_BLOCK} and its inputs a multiple of "
            f"{CPU_4BIT_COLUMN_BLOCK}; these are not: {shown}. Use 8-bit (model.quantization.bits=8), no "
            "quantization, or a GPU. (Published models always fit; this happens with very small test models.)"
        )
