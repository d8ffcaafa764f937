"""Two timings that CPU flags cannot replace, each a fraction of a second on one thread.

Flags say whether bf16 exists, not whether it is fast for LoRA's shapes: on a Xeon with AMX a
whole bf16 training step was no faster than float32, while on an AMD EPYC with AVX512-BF16
(where MKL's float32 matmul runs at a quarter of oneDNN's bf16 one) it was 1.8x faster. So on a
CPU with native bf16 ``probe_cpu`` times one LoRA layer's forward and backward both ways.

The same holds for attention: up to some length eager attention's forward and backward beat
torch's sdpa kernel on a CPU, beyond it sdpa wins, and where that crossover lies differs by
machine (rows measured near 512 positions on an AMD EPYC with AVX512-BF16; the probe finds 256
on a Xeon with AMX). ``probe_attention`` finds it. ``probe_cache`` runs each once per machine.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# bf16 must beat float32 by this much: the probe's layer is one piece of a step, and the rest of
# the step (norms, softmax, the optimizer) does not speed up.
BF16_MARGIN = 1.25
# The probe's shapes: a pass of 256 tokens through a 576 -> 1536 projection with a rank-16 LoRA
# (SmolLM2's MLP), the size of the layers lorakit's passes are made of on a CPU.
_TOKENS, _IN, _OUT, _RANK = 256, 576, 1536, 16


@contextmanager
def _one_thread():
    """One compute thread while probing, the caller's count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    with _one_thread():
        for _ in range(rounds):  # the first round warms the kernels up
            for dtype in best:
                best[dtype] = min(best[dtype], _layer_step(dtype))
    return CpuSpeed(fp32_s=best[torch.float32], bf16_s=best[torch.bfloat16], threads=1)


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
    eager = [float("inf")] * len(_ATTENTION_LENGTHS)
    sdpa = list(eager)
    with _one_thread():
        for _ in range(rounds):
            for i, length in enumerate(_ATTENTION_LENGTHS):
                eager[i] = min(eager[i], _attention_step(length, True, dtype))
                sdpa[i] = min(sdpa[i], _attention_step(length, False, dtype))
    return AttentionSpeed(_ATTENTION_LENGTHS, tuple(eager), tuple(sdpa))
