"""The CPU as Linux describes it: its instruction-set flags, its name and its physical cores."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpuinfo() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text(errors="ignore") if cpuinfo.is_file() else ""


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX).

    Without them bf16 autocast on a CPU is emulated and slower than fp32.
    """
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_fp16() -> bool:
    """True when the CPU computes float16 natively (AVX512-FP16 or AMX-FP16); most do not."""
    flags = _cpuinfo()
    return "avx512_fp16" in flags or "amx_fp16" in flags


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flag_list() -> list[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return line.split(":", 1)[1].split()
    return []


def physical_cores() -> int:
    """Cores, not hardware threads: one compute thread per core is the fastest for matmuls."""
    cores = set()
    for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        try:
            cores.add(((cpu / "physical_package_id").read_text().strip(), (cpu / "core_id").read_text().strip()))
        except OSError:
            continue
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(len(cores) or available, available))
