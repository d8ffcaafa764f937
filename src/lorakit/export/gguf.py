"""Write a model as one GGUF file that llama.cpp and ollama run as is, or a LoRA adapter as a GGUF LoRA.

Written with the ``gguf`` package (the writer, name map and quantizers llama.cpp itself
ships); what differs per architecture is in ``gguf_arch``, the tokenizer in ``gguf_vocab``.
Everything that can refuse an export (the architecture, the tokenizer, the type) is checked
before a model is loaded or merged.

Tied embeddings are written once (``token_embd``) where llama.cpp reuses them for the output
when there is no ``output.weight``; the architectures whose llama.cpp graph requires an
output matrix get a copy.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import re
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import ModelConfig
from lorakit.export.gguf_arch import (
    GgufExportError, TensorNames, check_config, convert_tensor, interleave_rope_rows, write_metadata,
)
from lorakit.export.gguf_vocab import build_vocab, check_tokenizer, end_of_turn_id, write_vocab
from lorakit.export.merge import merged_model
from lorakit.export.modelfile import modelfile_path, write_modelfile
from lorakit.hub import looks_like_hub_id
from lorakit.model.loader import load_tokenizer, resolve_model_folder
from lorakit.outputs import Writing, atomic_output, check_output_files
from lorakit.run import CONFIG, MODEL_CONFIG, SAVED_ADAPTER, run_or_model

__all__ = ["FILE_TYPES", "K_QUANTS", "GgufExportError", "export_gguf", "interleave_rope_rows", "write_gguf"]

log = logging.getLogger(__name__)

FILE_TYPES = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
# k-quants: the gguf package can read them but has no quantizer for them, so they are made from an
# f16 file by llama.cpp's own quantizer (llama_model_quantize, through llama-cpp-python) where that is
# installed. Each maps to llama.cpp's file type (its mix: Q4_K_M keeps some matrices at Q6_K).
K_QUANTS = ("q4_k_m", "q5_k_m", "q6_k")
_ANY_K = re.compile(r"q[2-6]_k(_[sml])?", re.IGNORECASE)


def _has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def check_type(qtype: str) -> None:
    if qtype in FILE_TYPES:
        return
    if qtype in K_QUANTS:
        if _has_llama_cpp():
            return
        raise GgufExportError(
            f"--type {qtype}: k-quants are made by llama.cpp's own quantizer (the gguf package can only read "
            "them), and its Python binding is not installed: `pip install llama-cpp-python` (it compiles "
            f"llama.cpp, about 15 minutes), or export f16 and run `llama-quantize model.gguf model-{qtype}.gguf "
            f"{qtype.upper()}`"
        )
    if _ANY_K.fullmatch(qtype):
        raise GgufExportError(f"--type {qtype}: lorakit writes the k-quants {', '.join(K_QUANTS)}; for others run "
                              f"`llama-quantize model.gguf out.gguf {qtype.upper()}` on an f16 export")
    raise GgufExportError(f"--type {qtype!r}: choose one of {', '.join([*FILE_TYPES, *K_QUANTS])}")


def llama_cpp_quantize(source: Path, out: Path, qtype: str) -> None:
    """Quantize the f16 GGUF ``source`` to ``out`` with llama.cpp's quantizer (llama-cpp-python)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}")
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0:
        raise GgufExportError(f"llama.cpp's quantizer failed ({status}) making {qtype} from {source}")


def _tensors(model: PreTrainedModel, qtype: gguf.GGMLQuantizationType):
    """Yield (gguf name, data, raw dtype) in llama.cpp's types: 1-D tensors f32, matrices as asked."""
    cfg = model.config
    spec = check_config(cfg)
    names = TensorNames(spec, cfg.num_hidden_layers)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            if not spec.output_when_tied:
                continue
            name = "output.weight"
        else:
            name = names(hf_name)
        data = convert_tensor(cfg, spec, name, tensor).numpy()
        if data.ndim == 1:
            yield name, data, None
        elif qtype == gguf.GGMLQuantizationType.F16:
            yield name, data.astype(np.float16), None
        elif qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            # Q8_0 works on blocks of 32 along a row; a row of another length stays f16.
            yield name, data.astype(np.float16), None
        else:
            yield name, gguf.quants.quantize(data, qtype), qtype


def write_gguf(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path, qtype: str, name: str
) -> Path:
    """Write ``model`` with ``tokenizer`` (and its chat template) to ``out``."""
    check_type(qtype)
    if qtype in K_QUANTS:
        with atomic_output(out, f"the {qtype} GGUF") as job:
            f16 = write_gguf(model, tokenizer, job.tmp.with_suffix(".f16.gguf"), "f16", name)
            llama_cpp_quantize(f16, job.tmp, qtype)
        log.info("wrote %s (%s, %.1f MiB)", out, qtype, out.stat().st_size / 2**20)
        return out
    spec = check_config(model.config)
    tensor_type, file_type = FILE_TYPES[qtype]
    vocab = build_vocab(tokenizer, model.get_input_embeddings().weight.shape[0], end_of_turn_id(tokenizer))
    with atomic_output(out, f"the {qtype} GGUF") as job:
        writer = gguf.GGUFWriter(job.tmp, spec.name)
        writer.add_type("model")
        writer.add_name(name)
        write_metadata(writer, model.config, spec)
        writer.add_vocab_size(model.get_input_embeddings().weight.shape[0])
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(writer, vocab)
        for tensor_name, data, raw in _tensors(model, tensor_type):
            writer.add_tensor(tensor_name, data, raw_dtype=raw)
        finish_writer(writer, job)
    log.info("wrote %s (%s %s, %.1f MiB)", out, spec.name, qtype, out.stat().st_size / 2**20)
    return out


def finish_writer(writer: gguf.GGUFWriter, job: Writing) -> None:
    """Write the file ``writer`` holds; ``job`` learns its size first (its tensors' bytes) for a full disk's message."""
    job.needed = sum(info.nbytes for shard in writer.tensors for info in shard.values())
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()  # a failed write's file is deleted, and its room comes back only once it is closed


def preflight(source: Path, qtype: str) -> str:
    """Refuse what cannot be exported from the configs and the tokenizer alone, before loading weights.

    Returns the model folder: the run's base, the folder itself, or a hub id's snapshot.
    """
    check_type(qtype)
    run = run_or_model(source, SAVED_ADAPTER)
    if run is not None:
        folder = resolve_model_folder(run.read_config().model)
        tokenizer_source = str(source)  # the run's tokenizer, carrying its template
    elif (source / MODEL_CONFIG).is_file() or (not source.exists() and looks_like_hub_id(str(source))):
        # A model folder, or a hub id resolved to its cached (or downloaded) snapshot like any base.
        folder = tokenizer_source = resolve_model_folder(ModelConfig(name=str(source)))
    else:
        raise GgufExportError(
            f"{source} is neither a run folder ({CONFIG}), a model folder ({MODEL_CONFIG}) nor a hub id (owner/name)"
        )
    check_config(AutoConfig.from_pretrained(folder, local_files_only=True))
    check_tokenizer(load_tokenizer(tokenizer_source))
    return folder


def export_gguf(source: Path, out: Path, qtype: str = "f16", system_prompt: str | None = None,
                overwrite: bool = False) -> tuple[Path, Path]:
    """Export a run folder (merged in memory first) or a model folder; return the GGUF and Modelfile paths.

    ``overwrite``: replace the GGUF and Modelfile if they exist (regular files only, never through a link).
    """
    check_output_files({"--out": out, "the Modelfile": modelfile_path(out)}, overwrite)  # before any loading
    folder = preflight(source, qtype)
    run = run_or_model(source)
    if run is not None:
        model, tokenizer, cfg = merged_model(source)
        system_prompt = system_prompt or cfg.data.system_prompt
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
        tokenizer = load_tokenizer(folder)
    write_gguf(model, tokenizer, out, qtype, name=source.resolve().name)
    modelfile = write_modelfile(out, tokenizer, system_prompt)
    if run is not None:
        run.record_export(out)  # `lorakit verify RUN` checks it without being told
    return out, modelfile
