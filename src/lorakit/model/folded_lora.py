"""Decode with the adapter folded into the weights: one matmul per layer instead of three.

While a model generates, its LoRA weights do not change, so each plain LoRA linear can compute
``x (W + s·B·A)ᵀ`` with ``W + s·B·A`` formed once for the whole generation, rather than
``x Wᵀ + s·(x Aᵀ) Bᵀ`` at every token. In decoding, where each step multiplies a few rows by every
weight, the low-rank path's two extra small products (and their op overhead) per layer cost as
much as a fifth of the step: on the 2-core AMD EPYC of bench/results/ (2026-12-06), 16 rows of
SmolLM2-135M decoding 48 tokens took 5.75 s with LoRA r16 on all linear layers and 4.44 s with
none (bf16).

This is what merging does (``lorakit merge``), but into a copy: the base weight is left as it is,
because adding and later subtracting ``s·B·A`` in place would change it by rounding each time (in
bf16 by up to half a unit in the last place per element per step of a long GRPO run). The copy is
the price: one more set of the adapted layers' weights while generating, which is why the trainer
folds only where that fits (``fold_fits``) and otherwise runs the fused op (``fused_lora.py``).

The folded weight is formed in float32 and rounded once to the weight's dtype; in float32 the
answers equal peft's own layers' (tests/model/test_folded_lora.py), in bf16 they differ from them
by the rounding of ``W + s·B·A``, as a merged model's do.

Only the plain case is folded (one active adapter, no DoRA or other variant, no LoRA bias, a plain
``nn.Linear`` base: the cases ``fused_lora`` fuses); other layers keep their own forward.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from peft.tuners.lora import layer as lora_layer

from lorakit.model.fused_lora import fusable, plain_adapter


def foldable(layers: list[torch.nn.Module]) -> list[torch.nn.Module]:
    return [m for m in layers if fusable(m) and plain_adapter(m) is not None]


def fold_bytes(layers: list[torch.nn.Module]) -> int:
    """The memory the folded copies of ``layers``' weights take."""
    return sum(m.get_base_layer().weight.nbytes for m in foldable(layers))


def free_bytes(device: torch.device) -> int:
    """Memory the process could still take on ``device``: the GPU's free memory, or the host's available."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def fold_fits(layers: list[torch.nn.Module], device: torch.device) -> bool:
    """Whether the folded copies take at most a quarter of the free memory: the rest is left to the
    KV cache, the activations and whatever else runs, so folding never makes a run run out."""
    return fold_bytes(layers) <= free_bytes(device) // 4


def _folded_forward(weight: torch.Tensor, bias: torch.Tensor | None, layer: lora_layer.Linear):
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs:  # a call peft handles itself (mixed-adapter batches): its own forward
            return type(layer).forward(layer, x, *args, **kwargs)
        return F.linear(x, weight, bias)

    return forward


@contextmanager
def folded(layers: list[torch.nn.Module]):
    """Within this block each foldable layer of ``layers`` runs as one linear over ``W + s·B·A``.

    Meant for generation (no gradients reach the adapter through it); the adapters must not change
    inside the block.
    """
    patched = []
    try:
        for m in foldable(layers):
            name = plain_adapter(m)
            base = m.get_base_layer()
            with torch.no_grad():
                delta = m.lora_B[name].weight.float() @ m.lora_A[name].weight.float()
                # torch.add, not add_: for a float32 weight .float() is the weight itself
                weight = torch.add(base.weight.float(), delta, alpha=float(m.scaling[name])).to(base.weight.dtype)
            m.forward = _folded_forward(weight, base.bias, m)
            patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward
