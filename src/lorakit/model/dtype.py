"""Which dtype the weights load in, decided once and refused early when the hardware lacks it.

A dtype the machine cannot compute does not fail at load time: it fails (or crawls) at the
first matmul, minutes into a run. So the choice is checked here, before anything loads.
"""

from __future__ import annotations

import logging

import torch

from lorakit.errors import LorakitError
from lorakit.hardware.cpu import cpu_has_bf16, cpu_has_fp16
from lorakit.hardware.speed import auto_half

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_AUTO = {"bf16": torch.bfloat16, "fp16": torch.float16, None: torch.float32}  # hardware.speed.auto_half's answers


class DtypeError(LorakitError, ValueError):
    """The configured dtype cannot run on this machine; the message names what can."""


def _gpu_name() -> str:
    return torch.cuda.get_device_name(torch.cuda.current_device())


def resolve_dtype(name: str, key: str = "model.dtype") -> torch.dtype:
    """Map a config dtype name to a torch dtype for the device this process uses.

    'auto' is bfloat16 on a GPU that has it, float16 on an older GPU. On a CPU it is bfloat16 where
    this CPU's probe measured bf16 faster, else float32 (``hardware.speed.auto_half``, which
    ``train.precision: auto`` follows too).
    """
    on_gpu = torch.cuda.is_available()
    if name == "auto":
        return _AUTO[auto_half()[0]]
    if name not in DTYPES:
        raise DtypeError(f"{key}={name!r} is not a dtype; choose auto, float32, bfloat16 or float16")
    if name == "bfloat16":
        if on_gpu and not torch.cuda.is_bf16_supported():
            raise DtypeError(
                f"{key}=bfloat16 but this GPU ({_gpu_name()}) has no bfloat16 (it needs compute capability 8.0+); "
                "use float16 or auto"
            )
        if not on_gpu and not cpu_has_bf16():
            log.warning(
                "%s=bfloat16: this CPU has no native bfloat16 (no AVX512-BF16 or AMX), so torch emulates it: "
                "half the memory of float32 but slower", key
            )
    # Float16 weights need only a CPU that computes float16; train.precision=fp16 (autocast) is
    # refused on every CPU for another reason (train/plan.py: pick_precision).
    if name == "float16" and not on_gpu and not cpu_has_fp16():
        raise DtypeError(
            f"{key}=float16 needs a CUDA GPU or a CPU with native float16 (AVX512-FP16 or AMX-FP16); "
            "this machine has neither. Use float32 (default) or bfloat16"
        )
    return DTYPES[name]
