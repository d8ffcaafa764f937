"""Attention of a packed row computed per sample, not as one row-long square.

A packed pass is one row holding several samples, with position ids that restart at each. The
model's own attention computes the whole row's L×L scores and masks all but the blocks on the
diagonal: for 9 samples of 110 tokens, 9x the work that counts, and the L×L tensors (scores,
softmax in float32, casts, their gradients) dominated a CPU step (123 ms a layer, against 17 ms
per sample, measured on a Xeon with AMX; bench/pass_cost.py). Here each sample's slice of the
queries, keys and values goes through causal attention on its own:

    row       [a a a b b c c c c]      position ids [0 1 2 0 1 0 1 2 3]
    samples   a: 0..3, b: 3..5, c: 5..9 -> three causal attentions of 3, 2 and 4 positions

Each sample runs eager attention (transformers' own function, the model's numerics) up to
``eager_tokens`` positions and torch's sdpa beyond, where its fused kernel wins on a CPU. The
result is the model's masked attention over the row, to rounding (tests/model/test_packed_attention.py).

Registered with transformers' AttentionInterface under ``PACKED``; with no mask function registered
for it, the model builds no L×L mask at all. Only for decoder families whose attention is plain
causal softmax attention (no sliding window, soft-capping or sinks) and only for one packed row
with no padding: ``train/passes.py`` chooses it per pass.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PretrainedConfig
from transformers.models.llama.modeling_llama import eager_attention_forward

PACKED = "lorakit_packed"

# Families whose attention is the plain causal attention this reproduces (their eager function is
# llama's). Others keep the model's own attention.
PLAIN_ATTENTION = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "granite", "olmo2", "smollm3"})


class PackedAttentionError(RuntimeError):
    """The packed attention was given something other than one packed row (a lorakit bug)."""


def supports_packed_attention(config: PretrainedConfig | None) -> bool:
    return config is not None and getattr(config, "model_type", None) in PLAIN_ATTENTION


class _Segments:
    """Sample lengths of the last row seen: every layer of one forward gets the same position ids."""

    position_ids: torch.Tensor | None = None
    lengths: list[int] = []

    @classmethod
    def of(cls, position_ids: torch.Tensor) -> list[int]:
        if position_ids is not cls.position_ids:
            pos = position_ids.reshape(-1)
            starts = torch.nonzero(pos[1:] != pos[:-1] + 1).flatten() + 1
            edges = [0, *starts.tolist(), pos.numel()]
            cls.lengths = [b - a for a, b in zip(edges, edges[1:])]
            cls.position_ids = position_ids  # held, so no other tensor can take its identity meanwhile
        return cls.lengths


@functools.lru_cache(maxsize=64)
def causal_mask(length: int, dtype: torch.dtype, device: str, window: int | None = None) -> torch.Tensor:
    """The additive causal mask transformers' eager attention is given: 0 allowed, the dtype's min not.

    With a sliding ``window`` a query also sees only the last ``window`` positions (itself included),
    as transformers' sliding-window masks do.
    """
    blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    if window is not None and window < length:
        blocked |= torch.ones(length, length, dtype=torch.bool, device=device).tril(-window)
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)[None, None]


def packed_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, eager_tokens=0,
                     position_ids=None, **kwargs):
    """transformers' attention-function signature: [1, heads, L, d] in, ([1, L, heads, d], None) out."""
    if query.shape[0] != 1 or position_ids is None or attention_mask is not None or key.shape[2] != query.shape[2]:
        raise PackedAttentionError("packed attention takes one packed row with position ids and no padding or cache")
    if kwargs.get("softcap") or kwargs.get("sinks") is not None:
        raise PackedAttentionError(f"packed attention cannot compute {type(module).__name__}'s attention")
    window = kwargs.get("sliding_window")
    lengths = _Segments.of(position_ids)
    outputs = []
    # split, not slicing: the backward of a split is one concatenation, that of each slice a
    # row-long zero tensor the slice's gradient is added into.
    for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value))):
        length = q.shape[2]
        windowed = window is not None and length > window  # only eager takes a banded mask here
        if length <= eager_tokens or windowed:
            mask = causal_mask(length, query.dtype, query.device.type, window if windowed else None)
            out, _ = eager_attention_forward(module, q, k, v, mask, scaling=scaling, dropout=dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=dropout,
                                                 enable_gqa=k.shape[1] != q.shape[1]).transpose(1, 2)
        outputs.append(out)
    return torch.cat(outputs, dim=1).contiguous(), None


def register(eager_tokens: int) -> str:
    """Register the packed attention (samples up to ``eager_tokens`` eager, longer ones sdpa); its name.

    It is kept out of ``torch.compile``'s graphs (``train.compile``): its loop over the row's samples
    depends on their lengths, so a traced copy would be compiled again for each new pattern of
    lengths. A compiled layer runs as a few graphs around this call (model/compiled_layers.py).
    """
    attention = torch.compiler.disable(functools.partial(packed_attention, eager_tokens=eager_tokens))
    AttentionInterface.register(PACKED, attention)
    return PACKED
