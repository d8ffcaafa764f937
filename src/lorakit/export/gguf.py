"""Write a Llama-architecture model as one GGUF file that llama.cpp and ollama run as is.

Written with the ``gguf`` package (the writer and Q8_0 quantizer llama.cpp itself ships);
the name mapping and metadata are ours, for the one architecture we export. Two details
decide whether the file works at all:

* llama.cpp applies rotary embeddings to adjacent pairs of each head's dimensions, while
  transformers' Llama rotates the first half against the second. The rows of q_proj and
  k_proj are reordered so that the same rotation lands on the same values.
* Tied embeddings are written once (``token_embd``); llama.cpp reuses them for the output
  when there is no ``output.weight``, and transformers reads that absence as tying.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import ModelConfig
from lorakit.data.templates import resolve_template
from lorakit.export.gguf_vocab import build_vocab, write_vocab
from lorakit.export.merge import merged_model
from lorakit.export.modelfile import write_modelfile
from lorakit.hub import looks_like_hub_id
from lorakit.infer.session import is_run_dir
from lorakit.model.loader import load_tokenizer, resolve_model_folder

log = logging.getLogger(__name__)

FILE_TYPES = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

_TOP_LEVEL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_PER_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")


class GgufExportError(ValueError):
    """The model cannot be exported to GGUF; the message says what is unsupported."""


def gguf_tensor_name(hf_name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``."""
    module, _, kind = hf_name.rpartition(".")
    if module in _TOP_LEVEL:
        return f"{_TOP_LEVEL[module]}.{kind}"
    match = _LAYER_NAME.fullmatch(module)
    if match and match.group(2) in _PER_LAYER:
        return f"blk.{match.group(1)}.{_PER_LAYER[match.group(2)]}.{kind}"
    raise GgufExportError(f"tensor {hf_name} has no place in a llama GGUF file")


def interleave_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from [first half | second half] to pairs (h0, s0, h1, s1, ...)."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _check_architecture(model: PreTrainedModel) -> None:
    cfg = model.config
    if cfg.model_type != "llama":
        raise GgufExportError(f"GGUF export supports Llama-architecture models; this one is {cfg.model_type!r}")
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise GgufExportError(f"rope scaling {rope.get('rope_type')!r} is not supported by lorakit's GGUF export")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise GgufExportError("Llama models with attention or MLP biases are not supported by lorakit's GGUF export")


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _write_architecture(writer: gguf.GGUFWriter, model: PreTrainedModel, name: str, file_type: int) -> None:
    cfg = model.config
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(_head_dim(cfg))
    if _head_dim(cfg) != cfg.hidden_size // cfg.num_attention_heads:
        writer.add_key_length(_head_dim(cfg))
        writer.add_value_length(_head_dim(cfg))
    writer.add_rope_freq_base(float((cfg.rope_parameters or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(model.get_input_embeddings().weight.shape[0])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tensors(model: PreTrainedModel, qtype: gguf.GGMLQuantizationType):
    """Yield (gguf name, data, raw dtype) in llama.cpp's types: norms f32, matrices f16 or q8_0."""
    cfg = model.config
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue
        name = gguf_tensor_name(hf_name)
        tensor = tensor.detach().to(torch.float32).cpu()
        if name.endswith("attn_q.weight"):
            tensor = interleave_rope_rows(tensor, cfg.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            tensor = interleave_rope_rows(tensor, cfg.num_key_value_heads)
        data = tensor.numpy()
        if data.ndim == 1:
            yield name, data, None
        elif qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
            yield name, gguf.quants.quantize(data, qtype), qtype
        else:
            # Q8_0 works on blocks of 32 along a row; a row of another length stays f16.
            yield name, data.astype(np.float16), None


def write_gguf(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path, qtype: str, name: str
) -> Path:
    """Write ``model`` with ``tokenizer`` (and its chat template) to ``out``."""
    if qtype not in FILE_TYPES:
        raise GgufExportError(f"--type {qtype!r}: choose one of {', '.join(FILE_TYPES)}")
    _check_architecture(model)
    tensor_type, file_type = FILE_TYPES[qtype]
    end_of_turn = None
    if isinstance(tokenizer.chat_template, str):
        ends = resolve_template(tokenizer, "auto").end_token_ids - {tokenizer.eos_token_id}
        end_of_turn = min(ends) if ends else None
    vocab = build_vocab(tokenizer, model.get_input_embeddings().weight.shape[0], end_of_turn)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gguf-", dir=out.parent)) / out.name
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        _write_architecture(writer, model, name, int(file_type))
        write_vocab(writer, vocab)
        for tensor_name, data, raw in _tensors(model, tensor_type):
            writer.add_tensor(tensor_name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    log.info("wrote %s (%s, %.1f MiB)", out, qtype, out.stat().st_size / 2**20)
    return out


def export_gguf(source: Path, out: Path, qtype: str = "f16", system_prompt: str | None = None) -> tuple[Path, Path]:
    """Export a run folder (merged in memory first) or a model folder; return the GGUF and Modelfile paths."""
    if is_run_dir(source):
        model, tokenizer, cfg = merged_model(source)
        system_prompt = system_prompt or cfg.data.system_prompt
    elif (source / "config.json").is_file() or (not source.exists() and looks_like_hub_id(str(source))):
        # A model folder, or a hub id resolved to its cached (or downloaded) snapshot like any base.
        folder = resolve_model_folder(ModelConfig(name=str(source)))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
        tokenizer = load_tokenizer(folder)
    else:
        raise GgufExportError(
            f"{source} is neither a run folder (lorakit.yaml), a model folder (config.json) nor a hub id (owner/name)"
        )
    write_gguf(model, tokenizer, out, qtype, name=source.resolve().name)
    modelfile = write_modelfile(out, tokenizer, system_prompt)
    return out, modelfile
