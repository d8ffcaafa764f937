"""What this machine computes fastest: the probes' answers, measured once per machine and kept.

Each answer is cached in ``cpu-probe.json`` under a key of the CPU model, its flags, torch's
version and the variables that cap torch's instruction sets, or pinned by an environment
variable (the tests pin both, so they never depend on the machine they run on).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

from lorakit.errors import LorakitError
from lorakit.hardware.cpu import cpu_flag_list, cpu_has_bf16, cpu_name
from lorakit.hardware.probes import AttentionSpeed, CpuSpeed, probe_attention, probe_cpu

log = logging.getLogger(__name__)

# LORAKIT_CPU_PRECISION=fp32 or bf16 skips the precision probe.
PRECISION_ENV = "LORAKIT_CPU_PRECISION"
# LORAKIT_CPU_EAGER_TOKENS=N skips the attention probe.
EAGER_ENV = "LORAKIT_CPU_EAGER_TOKENS"
PROBE_VERSION = 2  # 2: one thread, CPU seconds
# lorakit's one cache root, model.cache_dir's default (data.cache_dir's default is inside it). The
# probe's answer belongs to the machine, not to a run, so no config key moves it; and like those
# defaults it does not follow XDG_CACHE_HOME, so all of lorakit's cache is in one place
# (tests/test_hardware.py checks the roots agree).
_CACHE_ROOT = Path("~/.cache/lorakit")


class PinError(LorakitError, ValueError):
    """An environment variable pins a probe's answer to something that is not one."""


def _cache_file() -> Path:
    return _CACHE_ROOT.expanduser() / "cpu-probe.json"


def _machine_key() -> str:
    """The probe's answer holds for this CPU model and flags and this torch."""
    # The variables that cap the instruction sets torch's kernels use (oneDNN's, MKL's, ATen's) change
    # the answer on the same CPU: a run with ONEDNN_MAX_CPU_ISA=AVX2 computes bf16 without AMX.
    caps = [os.environ.get(v, "") for v in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                                            "ATEN_CPU_CAPABILITY")]
    parts = [cpu_name(), " ".join(sorted(cpu_flag_list())), torch.__version__, str(PROBE_VERSION), *caps]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cached(name: str, probe, kind, cache: Path | None = None):
    """This machine's answer to probe ``name``, measured on first use and read from the cache after."""
    cache = cache or _cache_file()
    key = f"{_machine_key()}-{name}"
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), dict):
        try:
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in known[key].items()})
        except TypeError:
            pass  # written by another layout: measure again
    answer = probe()
    known[key] = asdict(answer)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=2), encoding="utf-8")
    except OSError as err:  # a read-only home: measure again next time, train now
        log.warning("could not cache the CPU probe in %s: %s", cache, err)
    return answer


def cpu_speed(probe=probe_cpu, cache: Path | None = None) -> CpuSpeed:
    """This machine's precision probe result, measured on first use and read from the cache after."""

    def measure() -> CpuSpeed:
        speed = probe()
        log.info("CPU probe (%s, %d thread): one LoRA layer step %.2f ms float32, %.2f ms bf16",
                 cpu_name(), speed.threads, 1e3 * speed.fp32_s, 1e3 * speed.bf16_s)
        return speed

    return _cached("precision", measure, CpuSpeed, cache)


def cpu_eager_attention_tokens(dtype: torch.dtype, probe=probe_attention, cache: Path | None = None) -> int:
    """Up to how many positions eager attention beats sdpa on this CPU in ``dtype`` (probed once)."""
    pinned = os.environ.get(EAGER_ENV)
    if pinned:
        try:
            return int(pinned)
        except ValueError:
            raise PinError(f"{EAGER_ENV}={pinned!r}: give a number of positions (or unset it to measure)") from None
    name = "attention-" + str(dtype).removeprefix("torch.")
    speed = _cached(name, lambda: probe(dtype), AttentionSpeed, cache)
    return speed.eager_up_to


def pinned_or_measured(env: str) -> str:
    """How this machine's answer was found: the variable that pins it, or the probe."""
    return f"{env}={os.environ[env]}" if os.environ.get(env) else "measured once on this machine"


def _cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU trains faster with bf16 weights under bf16 autocast than in float32, and why."""
    pinned = os.environ.get(PRECISION_ENV)
    if pinned:
        if pinned not in ("fp32", "bf16"):
            raise PinError(f"{PRECISION_ENV}={pinned!r}: use fp32 or bf16 (or unset it to measure)")
        return pinned == "bf16", pinned_or_measured(PRECISION_ENV)
    if not cpu_has_bf16():  # emulated bf16 is tens of times slower; nothing to measure
        return False, "no native bf16 on this CPU (no AVX512-BF16 or AMX)"
    faster = cpu_speed().bf16_faster
    return faster, f"bf16 {'' if faster else 'not '}faster than fp32 on this CPU ({pinned_or_measured(PRECISION_ENV)})"


def auto_half() -> tuple[str | None, str]:
    """What 'auto' computes in on this device, "bf16", "fp16" or None (float32), and why.

    ``train.precision: auto`` and ``model.dtype: auto`` both follow it: on a CPU bf16 is picked only
    where the probe measured bf16 weights under bf16 autocast faster than float32 (the frozen weights
    then need no cast per step, and take half the memory); without native bf16 it is emulated and far
    slower.
    """
    if torch.cuda.is_available():
        return ("bf16", "this GPU has bf16") if torch.cuda.is_bf16_supported() else ("fp16", "this GPU has no bf16")
    prefers, why = _cpu_bf16()
    return ("bf16" if prefers else None), why
