"""One autograd op for a LoRA linear layer: the frozen matmul and the low-rank path together.

peft computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` as six or seven autograd nodes per
layer (under autocast also a cast of A and of B each call): with 7 adapted layers in each of 30
layers of a small model, a CPU pass spends much of its time in the overhead of those nodes rather
than in the matmuls. With dropout 0 the whole layer is one op::

    h = x Aᵀ                      (T×r)
    y = x Wᵀ + b + s · h Bᵀ       (T×out, one addmm on top of the frozen matmul)

and its backward, by hand, with the frozen weight's gradient never formed::

    g_h = s · g B                 (T×r)
    dx  = g W + g_h A             (T×in, one addmm on top of the frozen matmul)
    dA  = g_hᵀ x                  (r×in)
    dB  = s · gᵀ h                (out×r)

Under autocast every product runs in the autocast dtype, as peft's path does (the adapter's
gradients come back in the adapters' own float32), so the result equals peft's within that
dtype's rounding; in float32 it equals it to float32 rounding (tests/model/test_fused_lora.py).

Only the plain case is fused: one active adapter, dropout 0 (or evaluation: with dropout in
training the mask's random numbers cost more than the fusion saves, 1.89 s against peft's 1.80 s a
step measured on a Xeon with AMX, so peft's path runs), no DoRA or other
variant, no LoRA bias, a plain ``nn.Linear`` base (not a 4/8-bit one), not merged. Any other layer
keeps peft's forward, so switching this on never changes what is computed, only how.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from peft.tuners.lora import layer as lora_layer


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, dtype: torch.dtype):
        shape = x.shape
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, shape[-1]).to(dtype)
            w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
            h = x2 @ a.t()
            y = x2 @ w.t() if bias is None else torch.addmm(bias.to(dtype), x2, w.t())
            y.addmm_(h, b.t(), alpha=scale)
        ctx.save_for_backward(x2, w, a, b, h)
        ctx.scale = scale
        ctx.x_dtype = x.dtype
        ctx.param_dtypes = (lora_a.dtype, lora_b.dtype)
        ctx.bias_grad = bias is not None and bias.requires_grad
        ctx.weight_grad = weight.requires_grad
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, w, a, b, h = ctx.saved_tensors
        scale = ctx.scale
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(w.dtype)
            g_h = (g @ b).mul_(scale)
            dx = torch.addmm(g @ w, g_h, a) if ctx.needs_input_grad[0] else None
            d_a = (g_h.t() @ x2).to(ctx.param_dtypes[0]) if ctx.needs_input_grad[3] else None
            d_b = (g.t() @ h).mul_(scale).to(ctx.param_dtypes[1]) if ctx.needs_input_grad[4] else None
            d_w = g.t() @ x2 if ctx.weight_grad else None
            d_bias = g.sum(0) if ctx.bias_grad else None
        if dx is not None:
            dx = dx.view(*grad.shape[:-1], dx.shape[-1]).to(ctx.x_dtype)
        return dx, d_w, d_bias, d_a, d_b, None, None


def plain_adapter(layer: lora_layer.Linear) -> str | None:
    """The one active adapter of ``layer`` when it is a plain LoRA (no DoRA or other variant, no bias), else None."""
    if layer.disable_adapters or layer.merged:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in layer.lora_variant or getattr(layer, "lora_bias", {}).get(name, False):
        return None
    if layer.lora_B[name].bias is not None or layer.lora_A[name].bias is not None:
        return None
    return name


def _fusable_adapter(layer: lora_layer.Linear, kwargs: dict) -> str | None:
    """The one adapter this call can fuse, or None when peft's own forward must run."""
    name = None if kwargs else plain_adapter(layer)
    if name is None:
        return None
    dropout = layer.lora_dropout[name]
    if not isinstance(dropout, torch.nn.Identity) and (dropout.training and dropout.p > 0):
        return None
    return name


def fusable(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a peft LoRA linear over a plain ``nn.Linear`` (its calls may fuse)."""
    return type(module) is lora_layer.Linear and type(module.get_base_layer()) is torch.nn.Linear


def fused_forward(layer: lora_layer.Linear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``layer``'s forward, fused where the call is the plain case and peft's own otherwise."""
    name = None if args else _fusable_adapter(layer, kwargs)
    if name is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    base = layer.get_base_layer()
    dtype = _compute_dtype(x)
    return _LoraLinear.apply(x, base.weight, base.bias, layer.lora_A[name].weight, layer.lora_B[name].weight,
                             float(layer.scaling[name]), dtype)


@contextmanager
def fused(layers: list[torch.nn.Module]):
    """Within this block ``layers`` (those ``fusable``) run as one fused op each where a call allows it."""
    for m in layers:
        m.forward = fused_forward.__get__(m)
    try:
        yield
    finally:
        for m in layers:
            del m.forward
