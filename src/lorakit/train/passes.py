"""How each forward pass runs: packed or padded, eager or sdpa attention, no wasted casts.

``microbatch.split_batch`` decides which samples share a pass; this decides how the model
computes it. Each choice here changes the speed, never the result (tests/train/test_passes.py):

- Attention per pass length. On a CPU, torch's sdpa kernel has a slow backward for short rows
  (12 ms per layer for 110 tokens measured on a Xeon), while eager attention's cost grows with
  the square of the row: eager up to ``eager_tokens`` positions a row, the model's own beyond.
- A packed row's attention per sample (``model/packed_attention.py``): each sample's own causal
  attention instead of the row's L×L square with all but its diagonal blocks masked. Each sample
  is eager up to ``eager_tokens`` positions and sdpa beyond.
- peft casts each adapter's input to the adapter's float32 before its matmul. Under autocast
  the matmul casts it straight back to bf16, so the first cast only copies: it is turned off
  while a pass runs under autocast (exactly the same values reach the matmul).
- Each plain LoRA linear as one fused op (``model/fused_lora.py``): fewer autograd nodes and
  casts per layer, the same products.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from lorakit.model import fused_lora, packed_attention
from lorakit.model.loss import causal_lm
from lorakit.transformers_internals import attention_implementation, can_set_attention, supports_attention_backend


def reads_packed_positions(model: torch.nn.Module) -> bool:
    """Whether the model keeps attention within each sample of a packed row from its position ids.

    transformers' own architectures build their masks with ``masking_utils``, which finds the
    boundaries where the position ids restart; models with their own attention code may not.
    """
    base = causal_lm(model)
    return supports_attention_backend(base) and _can_switch_attention(base)


def _can_switch_attention(base: torch.nn.Module) -> bool:
    return can_set_attention(base) and hasattr(base, "set_attn_implementation")


def row_length(inputs: dict[str, torch.Tensor]) -> int:
    return inputs["input_ids"].shape[-1]


def is_packed_row(inputs: dict[str, torch.Tensor]) -> bool:
    """One row of samples told apart by position ids alone (what PackCollator makes)."""
    return inputs["input_ids"].shape[0] == 1 and "position_ids" in inputs and inputs.get("attention_mask") is None


@dataclass(frozen=True)
class PassSetup:
    """What a model allows of the pass settings asked for (train/plan.py records it)."""

    packed: bool  # passes packed into one row with position ids
    own_attention: str | None  # the model's attention implementation as loaded
    eager_tokens: int  # rows (or a packed row's samples) up to this long run eager attention
    per_sample: bool  # a packed row's attention computed per sample


def pass_setup(model: torch.nn.Module, packing: bool | None, eager_tokens: int,
               per_sample_attention: bool) -> PassSetup:
    base = causal_lm(model)
    config = getattr(base, "config", None)
    own = attention_implementation(config)
    # Only a model that can change its attention between passes, and only away from sdpa:
    # a model set up with flash attention or eager keeps it.
    switchable = own == "sdpa" and _can_switch_attention(base)
    return PassSetup(
        packed=reads_packed_positions(model) if packing is None else packing,
        own_attention=own,
        eager_tokens=eager_tokens if switchable else 0,
        per_sample=per_sample_attention and switchable and packed_attention.supports_packed_attention(config),
    )


class PassRunner:
    """Runs passes of one model; built once per trainer."""

    def __init__(self, model: torch.nn.Module, packing: bool | None, eager_tokens: int, autocast: bool,
                 per_sample_attention: bool = False, fuse_lora: bool = False):
        self.base = causal_lm(model)
        setup = pass_setup(model, packing, eager_tokens, per_sample_attention)
        self.packed, self.own_attention, self.eager_tokens = setup.packed, setup.own_attention, setup.eager_tokens
        self.per_sample = packed_attention.register(setup.eager_tokens) if setup.per_sample else None
        self.adapters = [m for m in model.modules() if isinstance(m, BaseTunerLayer)] if autocast else []
        self.fused = [m for m in model.modules() if fused_lora.fusable(m)] if fuse_lora else []

    def attention_for(self, inputs: dict[str, torch.Tensor]) -> str | None:
        if self.own_attention is None:
            return None
        if self.per_sample and is_packed_row(inputs):
            return self.per_sample
        return "eager" if row_length(inputs) <= self.eager_tokens else self.own_attention

    @contextmanager
    def run(self, inputs: dict[str, torch.Tensor]):
        wanted = self.attention_for(inputs)
        before = attention_implementation(self.base.config) if wanted is not None else None
        if wanted is not None and wanted != before:
            self.base.set_attn_implementation(wanted)
        casting = [m.cast_input_dtype_enabled for m in self.adapters]
        for m in self.adapters:
            m.cast_input_dtype_enabled = False
        try:
            with fused_lora.fused(self.fused):
                yield
        finally:
            for m, cast in zip(self.adapters, casting):
                m.cast_input_dtype_enabled = cast
            # The per-sample attention computes packed rows only: whatever runs between passes
            # (evaluation, generation) gets the attention it had (a switch costs about 1.4 ms).
            if wanted == self.per_sample and wanted != before:
                self.base.set_attn_implementation(before)

    def restore(self) -> None:
        """The model's own attention again (for evaluation, generation and saving)."""
        if self.own_attention is not None and attention_implementation(self.base.config) != self.own_attention:
            self.base.set_attn_implementation(self.own_attention)
