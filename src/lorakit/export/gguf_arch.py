"""What each architecture looks like to llama.cpp: its GGUF name, metadata and tensor layouts.

Tensor names come from the ``gguf`` package's own map (the one llama.cpp's converter uses);
this module holds only what that map cannot say: which configs llama.cpp computes the same
way transformers does, and how a few tensors must be rearranged.

* Llama and Mistral: llama.cpp rotates adjacent pairs of each head's dimensions, transformers
  the first half against the second, so the rows of q and k are reordered. Qwen, Phi-3,
  Gemma and Falcon rotate halves in llama.cpp too ("neox" order) and need nothing.
* Gemma's RMSNorm multiplies by (1 + w); llama.cpp multiplies by w, so w + 1 is written.
* Bloom interleaves q, k and v per head in its fused matrix; llama.cpp wants all q rows, then
  all k, then all v.

Every check on a config runs before a model is loaded, so a model llama.cpp would compute
differently is refused with the reason before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gguf
import torch
from transformers import PretrainedConfig

from lorakit.errors import LorakitError


class GgufExportError(LorakitError, ValueError):
    """The model cannot be exported to GGUF; the message says what is unsupported."""


@dataclass(frozen=True)
class ArchSpec:
    arch: gguf.MODEL_ARCH
    norm: str  # "rms" or "layer"
    rope_pairs: bool  # llama.cpp's adjacent-pair rotation: reorder q/k rows
    norm_plus_one: bool = False
    qkv_per_head: bool = False  # Bloom's interleaved fused qkv
    output_when_tied: bool = False  # llama.cpp needs output.weight even when tied: write a copy
    rope: bool = True

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


SPECS: dict[str, ArchSpec] = {
    "llama": ArchSpec(gguf.MODEL_ARCH.LLAMA, "rms", rope_pairs=True),
    "mistral": ArchSpec(gguf.MODEL_ARCH.LLAMA, "rms", rope_pairs=True),  # llama.cpp reads Mistral as llama
    "qwen2": ArchSpec(gguf.MODEL_ARCH.QWEN2, "rms", rope_pairs=False),
    "qwen3": ArchSpec(gguf.MODEL_ARCH.QWEN3, "rms", rope_pairs=False),
    "phi3": ArchSpec(gguf.MODEL_ARCH.PHI3, "rms", rope_pairs=False, output_when_tied=True),
    "gemma2": ArchSpec(gguf.MODEL_ARCH.GEMMA2, "rms", rope_pairs=False, norm_plus_one=True),
    "gemma3_text": ArchSpec(gguf.MODEL_ARCH.GEMMA3, "rms", rope_pairs=False, norm_plus_one=True),
    "falcon": ArchSpec(gguf.MODEL_ARCH.FALCON, "layer", rope_pairs=False, output_when_tied=True),
    "bloom": ArchSpec(gguf.MODEL_ARCH.BLOOM, "layer", rope_pairs=False, qkv_per_head=True,
                      output_when_tied=True, rope=False),
}


def _get(cfg: PretrainedConfig, *names, default=None):
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return value
    return default


def head_dim(cfg: PretrainedConfig) -> int:
    return _get(cfg, "head_dim", default=cfg.hidden_size // cfg.num_attention_heads)


def kv_heads(cfg: PretrainedConfig) -> int:
    if cfg.model_type == "falcon":
        return 1 if cfg.multi_query else cfg.num_attention_heads
    return _get(cfg, "num_key_value_heads", default=cfg.num_attention_heads)


def _rope(cfg: PretrainedConfig, layer_type: str = "full_attention") -> dict:
    """The rope parameters (of one layer type, where a config keeps them per type, as Gemma 3's does)."""
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    return dict(rope.get(layer_type) or {}) if layer_type in rope else rope


def gemma3_layer_types(n_layers: int) -> list[str]:
    """llama.cpp's fixed Gemma 3 pattern: five sliding-window layers, then one global."""
    return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]


def check_config(cfg: PretrainedConfig) -> ArchSpec:
    """The architecture's spec, or a GgufExportError naming what llama.cpp would compute differently."""
    model_type = cfg.model_type
    if model_type not in SPECS:
        hint = {
            "gemma3": "this is Gemma 3's multimodal wrapper; its text model (Gemma3ForCausalLM, gemma3_text) is "
                      "exported",
            "gemma": "Gemma 1 is not exported; Gemma 2 and 3 are",
        }.get(model_type, "")
        raise GgufExportError(
            f"GGUF export supports {', '.join(sorted(SPECS))} models; this one is {model_type!r}"
            + (f". {hint}" if hint else "") + ". Export a merged folder with `lorakit merge` for other runtimes."
        )
    spec = SPECS[model_type]
    rope = _rope(cfg)
    for kind in ("full_attention", "sliding_attention") if model_type == "gemma3_text" else ("full_attention",):
        scaling = _rope(cfg, kind).get("rope_type", "default")
        if spec.rope and scaling != "default":
            raise GgufExportError(f"rope scaling {scaling!r} is not supported by lorakit's GGUF export")
    if spec.rope and float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise GgufExportError("partial rotary embeddings are not supported by lorakit's GGUF export")
    if model_type in ("llama", "mistral") and (getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False)):
        raise GgufExportError("Llama models with attention or MLP biases are not supported by lorakit's GGUF export")
    if model_type == "gemma3_text" and list(cfg.layer_types) != gemma3_layer_types(cfg.num_hidden_layers):
        raise GgufExportError(
            "llama.cpp runs Gemma 3 with five sliding-window layers, then one global, repeated; this config's "
            f"layer_types are {cfg.layer_types}"
        )
    if model_type in ("gemma2", "gemma3_text"):
        scalar = getattr(cfg, "query_pre_attn_scalar", None)
        # transformers scales attention by 1/sqrt(query_pre_attn_scalar); llama.cpp by 1/sqrt(head_dim), except
        # for the 27B models, which it knows by their layer count (46, 62), by 1/sqrt(hidden / heads). The real
        # checkpoints agree with it; a config that does not would compute something else.
        big = cfg.num_hidden_layers == (46 if model_type == "gemma2" else 62)
        expected = cfg.hidden_size // cfg.num_attention_heads if big else head_dim(cfg)
        if scalar != expected:
            raise GgufExportError(
                f"this Gemma config scales attention by 1/sqrt({scalar}) (query_pre_attn_scalar), but llama.cpp "
                f"would by 1/sqrt({expected}): the exported model would compute something else"
            )
    if model_type == "falcon":
        problems = [text for bad, text in (
            (cfg.alibi, "ALiBi positions (falcon-rw)"), (not cfg.parallel_attn, "sequential attention (falcon-rw)"),
            (cfg.bias, "linear biases"), (cfg.new_decoder_architecture, "the Falcon-40B/180B layout (not tested)"),
            (not cfg.multi_query, "one key/value head per query head"),
        ) if bad]
        if problems:
            raise GgufExportError(
                "lorakit exports Falcon-7B-style models (multi-query, parallel attention, rotary); this one has "
                + ", ".join(problems)
            )
    return spec


def write_metadata(writer: gguf.GGUFWriter, cfg: PretrainedConfig, spec: ArchSpec) -> None:
    hidden = cfg.hidden_size
    writer.add_context_length(int(_get(cfg, "max_position_embeddings", "seq_length", default=2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(int(_get(cfg, "intermediate_size", "ffn_hidden_size", default=4 * hidden)))
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(kv_heads(cfg))
    if head_dim(cfg) != hidden // cfg.num_attention_heads or cfg.model_type in ("gemma2", "gemma3_text"):
        writer.add_key_length(head_dim(cfg))
        writer.add_value_length(head_dim(cfg))
    if spec.norm == "rms":
        writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    else:
        writer.add_layer_norm_eps(float(cfg.layer_norm_epsilon))
    if spec.rope:
        writer.add_rope_dimension_count(head_dim(cfg))
        writer.add_rope_freq_base(float(_rope(cfg).get("rope_theta", 10000.0)))
    if cfg.model_type == "gemma2":
        if cfg.attn_logit_softcapping is not None:
            writer.add_attn_logit_softcapping(float(cfg.attn_logit_softcapping))
        if cfg.final_logit_softcapping is not None:
            writer.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
        writer.add_sliding_window(int(cfg.sliding_window))
    elif cfg.model_type == "gemma3_text":
        writer.add_sliding_window(int(cfg.sliding_window))
        writer.add_rope_freq_base_swa(float(_rope(cfg, "sliding_attention").get("rope_theta", 10000.0)))
    elif cfg.model_type == "phi3" and getattr(cfg, "sliding_window", None):
        writer.add_sliding_window(int(cfg.sliding_window))


def interleave_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from [first half | second half] to pairs (h0, s0, h1, s1, ...)."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def split_qkv_per_head(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Bloom's fused rows (q0 k0 v0 q1 k1 v1 ...) to llama.cpp's (q0 q1 ... k0 k1 ... v0 v1 ...)."""
    rest = weight.shape[1:]
    return weight.reshape(n_heads, 3, -1, *rest).transpose(0, 1).reshape(weight.shape)


def row_transform(cfg: PretrainedConfig, spec: ArchSpec, gguf_name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The reordering of output rows llama.cpp needs for this tensor (applied to W, its bias, or LoRA's B)."""
    if spec.rope_pairs and gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
        return lambda t: interleave_rope_rows(t, cfg.num_attention_heads)
    if spec.rope_pairs and gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
        return lambda t: interleave_rope_rows(t, kv_heads(cfg))
    if spec.qkv_per_head and gguf_name.endswith(("attn_qkv.weight", "attn_qkv.bias")):
        return lambda t: split_qkv_per_head(t, cfg.num_attention_heads)
    return None


def convert_tensor(cfg: PretrainedConfig, spec: ArchSpec, gguf_name: str, tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().to(torch.float32).cpu()
    transform = row_transform(cfg, spec, gguf_name)
    if transform is not None:
        tensor = transform(tensor)
    if spec.norm_plus_one and gguf_name.endswith("norm.weight"):
        tensor = tensor + 1.0
    return tensor


class TensorNames:
    """transformers' parameter names -> GGUF names, through the gguf package's map for the architecture."""

    def __init__(self, spec: ArchSpec, n_blocks: int):
        self.map = gguf.get_tensor_name_map(spec.arch, n_blocks)

    def get(self, hf_name: str) -> str | None:
        for candidate in (hf_name, hf_name.removeprefix("transformer.")):
            # Bloom's map knows its checkpoint names, which lack the "transformer." of the module tree.
            name = self.map.get_name(candidate, try_suffixes=(".weight", ".bias"))
            if name is not None:
                return name
        return None

    def __call__(self, hf_name: str) -> str:
        name = self.get(hf_name)
        if name is None:
            raise GgufExportError(f"tensor {hf_name} has no place in a GGUF file of this architecture")
        return name
