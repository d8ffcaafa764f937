"""What the machine computes fastest, so 'auto' precision and dtype pick it here.

CPU flags say whether bf16 exists, not whether it is fast for LoRA's shapes: on a Xeon with
AMX a whole bf16 training step was no faster than float32, while on an AMD EPYC with
AVX512-BF16 (where MKL's float32 matmul runs at a quarter of oneDNN's bf16 one) it was 1.8x
faster. So on a CPU with native bf16 a probe times one LoRA layer's forward and backward
both ways, once per machine, and keeps the answer in the user cache.

The same holds for attention: up to some length eager attention's forward and backward beat
torch's sdpa kernel on a CPU, beyond it sdpa wins, and where that crossover lies differs by
machine (rows measured near 512 positions on an AMD EPYC with AVX512-BF16; the probe finds 256 on a Xeon with AMX). A
second probe finds it, once per machine and dtype.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lorakit.errors import LorakitError


class PrecisionError(LorakitError, ValueError):
    """train.precision asks for what this machine cannot compute."""


log = logging.getLogger(__name__)

# LORAKIT_CPU_PRECISION=fp32 or bf16 skips the probe (the tests pin it, so they never depend on
# the machine they run on).
PRECISION_ENV = "LORAKIT_CPU_PRECISION"
PROBE_VERSION = 2  # 2: one thread, CPU seconds
# bf16 must beat float32 by this much: the probe's layer is one piece of a step, and the rest of
# the step (norms, softmax, the optimizer) does not speed up.
BF16_MARGIN = 1.25
# The probe's shapes: a pass of 256 tokens through a 576 -> 1536 projection with a rank-16 LoRA
# (SmolLM2's MLP), the size of the layers lorakit's passes are made of on a CPU.
_TOKENS, _IN, _OUT, _RANK = 256, 576, 1536, 16


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


def cpu_name() -> str:
    for line in _cpu_flags().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def cpu_flag_list() -> list[str]:
    for line in _cpu_flags().splitlines():
        if line.startswith("flags"):
            return line.split(":", 1)[1].split()
    return []


@dataclass(frozen=True)
class CpuSpeed:
    """CPU seconds of one LoRA layer's forward and backward each way, on ``threads`` threads."""

    fp32_s: float
    bf16_s: float
    threads: int

    @property
    def bf16_faster(self) -> bool:
        return self.bf16_s * BF16_MARGIN < self.fp32_s


def _layer_step(dtype: torch.dtype) -> float:
    """CPU seconds of one forward-and-backward pass through a LoRA'd linear layer."""
    weight = torch.randn(_OUT, _IN, dtype=dtype) / _IN**0.5
    lora_a = torch.randn(_RANK, _IN, requires_grad=True)
    lora_b = torch.randn(_OUT, _RANK, requires_grad=True)
    x = torch.randn(_TOKENS, _IN, dtype=dtype, requires_grad=True)
    started = time.process_time()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = x @ weight.T + (x @ lora_a.T) @ lora_b.T
    out.float().sum().backward()
    return time.process_time() - started


def probe_cpu(rounds: int = 8) -> CpuSpeed:
    """The layer in float32 and in bf16 (bf16 weights, bf16 autocast), best of ``rounds``: ~0.5 s.

    On one thread and in CPU seconds, alternating: the ratio is the core's, and neither the load
    of other processes on a shared machine nor its drift over the probe favours one side.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
        for _ in range(rounds):  # the first round warms the kernels up
            for dtype in best:
                best[dtype] = min(best[dtype], _layer_step(dtype))
    finally:
        torch.set_num_threads(threads)
    return CpuSpeed(fp32_s=best[torch.float32], bf16_s=best[torch.bfloat16], threads=1)


# LORAKIT_CPU_EAGER_TOKENS=N skips the attention probe (the tests pin it too).
EAGER_ENV = "LORAKIT_CPU_EAGER_TOKENS"
# The attention probe's sample lengths and a small model's heads (SmolLM2: 9 heads, 3 key/value
# heads of 64): the crossover moves with the length far more than with the head count.
_ATTENTION_LENGTHS = (32, 64, 96, 128, 192, 256, 384, 512)
_HEADS, _KV_HEADS, _HEAD_DIM = 9, 3, 64


@dataclass(frozen=True)
class AttentionSpeed:
    """CPU seconds of one causal attention's forward and backward at each length, eager and sdpa."""

    lengths: tuple[int, ...]
    eager_s: tuple[float, ...]
    sdpa_s: tuple[float, ...]

    @property
    def eager_up_to(self) -> int:
        """The longest measured length up to which eager won at every length (0: sdpa everywhere)."""
        best = 0
        for length, eager, sdpa in zip(self.lengths, self.eager_s, self.sdpa_s):
            if eager >= sdpa:
                break
            best = length
        return best


def _attention_step(length: int, eager: bool, dtype: torch.dtype) -> float:
    from types import SimpleNamespace

    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from lorakit.model.packed_attention import causal_mask

    q = torch.randn(1, _HEADS, length, _HEAD_DIM, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(1, _KV_HEADS, length, _HEAD_DIM, dtype=dtype, requires_grad=True) for _ in range(2))
    mask = causal_mask(length, dtype, "cpu")  # the mask the per-sample attention gives eager
    module = SimpleNamespace(num_key_value_groups=_HEADS // _KV_HEADS, training=True)
    started = time.process_time()
    if eager:
        out, _ = eager_attention_forward(module, q, k, v, mask, scaling=_HEAD_DIM**-0.5)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    out.float().sum().backward()
    return time.process_time() - started


def probe_attention(dtype: torch.dtype, rounds: int = 3) -> AttentionSpeed:
    """Eager against sdpa at each probe length, best of ``rounds``, one thread: about 0.3 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        eager = [float("inf")] * len(_ATTENTION_LENGTHS)
        sdpa = list(eager)
        for _ in range(rounds):
            for i, length in enumerate(_ATTENTION_LENGTHS):
                eager[i] = min(eager[i], _attention_step(length, True, dtype))
                sdpa[i] = min(sdpa[i], _attention_step(length, False, dtype))
    finally:
        torch.set_num_threads(threads)
    return AttentionSpeed(_ATTENTION_LENGTHS, tuple(eager), tuple(sdpa))


def _cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return root / "lorakit" / "cpu-probe.json"


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
            raise ValueError(f"{EAGER_ENV}={pinned!r}: give a number of positions (or unset it to measure)") from None
    name = "attention-" + str(dtype).removeprefix("torch.")
    speed = _cached(name, lambda: probe(dtype), AttentionSpeed, cache)
    return speed.eager_up_to


def cpu_prefers_bf16() -> bool:
    """Whether this CPU trains faster with bf16 weights under bf16 autocast than in float32."""
    pinned = os.environ.get(PRECISION_ENV)
    if pinned:
        if pinned not in ("fp32", "bf16"):
            raise ValueError(f"{PRECISION_ENV}={pinned!r}: use fp32 or bf16 (or unset it to measure)")
        return pinned == "bf16"
    if not cpu_has_bf16():
        return False  # emulated bf16 is tens of times slower; nothing to measure
    return cpu_speed().bf16_faster


def pick_precision(requested: str) -> str:
    """Resolve 'auto' to fp32, bf16 or fp16 for the device this process trains on.

    On a CPU 'auto' is bf16 where the probe measured it faster (see ``cpu_prefers_bf16``), else fp32.
    """
    if requested != "auto":
        if requested == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise PrecisionError("train.precision=bf16 but this GPU has no bf16; use fp16 or auto")
        if requested == "fp16" and not torch.cuda.is_available():
            raise PrecisionError("train.precision=fp16 needs a GPU; on CPU use bf16 (if supported) or fp32")
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_prefers_bf16() else "fp32"


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


def set_compute_threads() -> int:
    """Intra-op threads = physical cores unless OMP_NUM_THREADS says otherwise; no tokenizer threads.

    The Rust tokenizers' thread pool would compete with torch's threads during steps; data is
    tokenized before training starts, so it is not needed then.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not os.environ.get("OMP_NUM_THREADS") and not torch.cuda.is_available():
        # Processes on one machine (lorakit train --nproc N) share its cores.
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
        torch.set_num_threads(max(1, physical_cores() // local))
    return torch.get_num_threads()


def peak_rss_bytes() -> int:
    import resource

    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cuda_peak_bytes() -> int | None:
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_reserved())
