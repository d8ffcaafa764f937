"""Quantized loading for QLoRA: the config section turned into bitsandbytes settings, or a
checkpoint saved already quantized (every ``*-bnb-4bit`` repo) loaded as it is.

bitsandbytes is an optional extra (``pip install 'lorakit[qlora]'``); the message says so
when it is missing instead of failing deep inside transformers. Version 0.50 runs its 4-bit and
8-bit layers on CPU too, which is how the tests exercise QLoRA on a machine with no GPU.

A pre-quantized checkpoint's bits, data type and double quantization are baked into its
weights, so ``model.quantization`` may restate them but not change them: a different setting is
refused rather than silently ignored (re-quantizing would mean dequantizing and quantizing a
second time, compounding the rounding). Its compute dtype is not baked in: it follows
``model.dtype`` (or ``compute_dtype``) exactly as when lorakit quantizes full weights itself.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from transformers import BitsAndBytesConfig, PretrainedConfig, PreTrainedModel

from lorakit.config import QuantizationConfig
from lorakit.errors import LorakitError
from lorakit.model.dtype import resolve_dtype

log = logging.getLogger(__name__)


class QuantizationUnavailableError(LorakitError, ImportError):
    """bitsandbytes is not installed; the message says how to install it."""


class QuantizationMismatchError(LorakitError, ValueError):
    """model.quantization asks for other settings than the checkpoint was quantized with."""


def require_bitsandbytes(what: str = "model.quantization") -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnavailableError(
            f"{what} needs bitsandbytes, which is not installed. Install it with:\n"
            "  pip install 'lorakit[qlora]'   (or: pip install bitsandbytes)"
        )


def bnb_config(cfg: QuantizationConfig, model_dtype: str, sharded: bool = False) -> BitsAndBytesConfig:
    """The bitsandbytes settings for ``cfg``; compute dtype 'auto' follows model.dtype.

    ``sharded`` (fsdp, ZeRO-3): the packed 4-bit weights are stored in the compute dtype rather
    than uint8, because those strategies flatten and shard all weights of a unit in one dtype.
    """
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
        bnb_4bit_quant_storage=compute if sharded else torch.uint8,
    )


def is_quantized(model: PreTrainedModel) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


# bitsandbytes' CPU 4-bit kernel for CPUs with AVX512-BF16 repacks each weight the first time a
# layer runs without gradients (evaluation, generation). The repacking splits the output rows into
# blocks of 32 and the input columns into the 4-bit blocks of 64, and it asserts (or fails on a
# reshape) when a layer's shape does not divide. Real models always divide; tiny ones may not.
CPU_4BIT_ROW_BLOCK = 32
CPU_4BIT_COLUMN_BLOCK = 64


class QuantizationShapeError(LorakitError, ValueError):
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


def _describe(cfg: QuantizationConfig) -> str:
    return "8-bit" if cfg.bits == 8 else f"4-bit {cfg.type}, double_quant {str(cfg.double_quant).lower()}"


def _baked(cfg: QuantizationConfig) -> tuple:
    """What is fixed in the weights once they are quantized (8-bit has no type to choose)."""
    return (8,) if cfg.bits == 8 else (4, cfg.type, cfg.double_quant)


def _as_dict(quantization_config) -> dict:
    return dict(quantization_config) if isinstance(quantization_config, dict) else quantization_config.to_dict()


def checkpoint_quantization(config: PretrainedConfig) -> QuantizationConfig | None:
    """The bitsandbytes settings a checkpoint was saved quantized with; None for full weights."""
    if getattr(config, "quantization_config", None) is None:
        return None
    raw = _as_dict(config.quantization_config)
    method = raw.get("quant_method")
    if method != "bitsandbytes":
        raise QuantizationMismatchError(
            f"the checkpoint is quantized with {method!r}; lorakit trains full-precision checkpoints and "
            "bitsandbytes-quantized ones (QLoRA). Give the full-precision model, with model.quantization if "
            "it should be quantized."
        )
    if raw.get("load_in_8bit"):
        return QuantizationConfig(bits=8)
    return QuantizationConfig(bits=4, type=raw.get("bnb_4bit_quant_type", "fp4"),
                              double_quant=bool(raw.get("bnb_4bit_use_double_quant", False)))


def quantized_loading(config: PretrainedConfig, asked: QuantizationConfig | None, model_dtype: str,
                      sharded: bool = False) -> dict:
    """The ``from_pretrained`` arguments for quantized loading; empty for a plain full-weight load.

    Full weights with ``asked``: bitsandbytes quantizes them while loading. A pre-quantized
    checkpoint: loaded as saved (a second BitsAndBytesConfig would only be ignored, with a
    warning), its compute dtype set through the config handed back.
    """
    saved = checkpoint_quantization(config)
    if saved is None:
        return {} if asked is None else {"quantization_config": bnb_config(asked, model_dtype, sharded)}
    require_bitsandbytes(f"this checkpoint (saved quantized by bitsandbytes, {_describe(saved)})")
    if asked is not None and _baked(asked) != _baked(saved):
        raise QuantizationMismatchError(
            f"model.quantization asks for {_describe(asked)}, but the checkpoint is already quantized "
            f"({_describe(saved)}) and cannot be quantized differently. Remove model.quantization to train "
            "on the checkpoint as it is, or give the full-precision model to quantize it your way."
        )
    log.info("the checkpoint is saved quantized (%s); loading it as it is", _describe(saved))
    if saved.bits == 4:
        compute = bnb_config(asked or saved, model_dtype).bnb_4bit_compute_dtype
        raw = _as_dict(config.quantization_config)
        raw["bnb_4bit_compute_dtype"] = str(compute).removeprefix("torch.")
        config.quantization_config = raw
    return {"config": config}
