"""What the machine computes natively, so 'auto' precision picks what is fastest here."""

from __future__ import annotations

from pathlib import Path

import torch

from lorakit.errors import LorakitError


class PrecisionError(LorakitError, ValueError):
    """train.precision asks for what this machine cannot compute."""


def _cpu_flags() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text(errors="ignore") if cpuinfo.is_file() else ""


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX).

    Without them bf16 autocast on a CPU is emulated and slower than fp32.
    """
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_fp16() -> bool:
    """True when the CPU computes float16 natively (AVX512-FP16 or AMX-FP16); most do not."""
    flags = _cpu_flags()
    return "avx512_fp16" in flags or "amx_fp16" in flags


def pick_precision(requested: str) -> str:
    """Resolve 'auto' to fp32, bf16 or fp16 for the device this process trains on.

    On a CPU 'auto' is fp32 even where bf16 is native (AVX512-BF16, AMX). Measured with
    bench/dtype_bench.py on a Xeon with AMX (SmolLM2, 24 alpaca samples, lorakit's padding-free
    passes): bf16 autocast over float32 weights took 1.20x the CPU time of plain fp32 and 10% more
    memory; over bf16 weights it matched them without autocast (0.98x). LoRA's passes are too
    small for bf16's faster matmuls to pay for autocast's casts.
    """
    if requested != "auto":
        if requested == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise PrecisionError("train.precision=bf16 but this GPU has no bf16; use fp16 or auto")
        if requested == "fp16" and not torch.cuda.is_available():
            raise PrecisionError("train.precision=fp16 needs a GPU; on CPU use bf16 (if supported) or fp32")
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def peak_rss_bytes() -> int:
    import resource

    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cuda_peak_bytes() -> int | None:
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_reserved())
