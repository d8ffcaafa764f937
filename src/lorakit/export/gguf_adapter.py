"""A run's LoRA adapter alone as a GGUF LoRA file for llama.cpp's ``--lora`` (and Ollama's ``ADAPTER`` before 0.34.1).

One base GGUF then serves many small adapters. The file holds, for each adapted matrix
``blk.N.attn_q.weight``, the tensors ``blk.N.attn_q.weight.lora_a`` (rank x in, peft's
``lora_A``) and ``.lora_b`` (out x rank), plus ``adapter.lora.alpha``; llama.cpp adds
``(alpha / rank) * B @ A`` to the base matrix. Where peft scales differently (rsLoRA's
``alpha / sqrt(rank)``, per-module ranks or alphas) the difference is folded into B, so the
file means exactly what the run trained. B's rows are reordered like the base matrix's rows
(rope pairs, Bloom's fused qkv), so the product lands where the base's rows went.

What such a file cannot express is refused before any work: DoRA, trained whole modules
(``modules_to_save``), trained biases, new tokens, LoRA on embeddings.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from lorakit.export.gguf import FILE_TYPES, finish_writer, preflight, write_gguf
from lorakit.export.gguf_arch import GgufExportError, TensorNames, check_config, row_transform
from lorakit.export.modelfile import modelfile_path, write_modelfile
from lorakit.model.adapter import load_run_base
from lorakit.model.loader import load_tokenizer, resolve_model_folder
from lorakit.outputs import atomic_output, check_output_files
from lorakit.run import SAVED_ADAPTER, RunFolder, open_run

log = logging.getLogger(__name__)

_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight")


def _pattern_value(pattern: dict, module: str, default):
    """peft's rank_pattern / alpha_pattern: a key matches a module name ending in it."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_adapter(config: dict, run_dir: Path) -> None:
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')} (only LoRA)")
    if config.get("use_dora"):
        problems.append("DoRA (its magnitude vectors have no place in a GGUF LoRA)")
    if config.get("modules_to_save"):
        problems.append(f"whole trained modules ({', '.join(config['modules_to_save'])})")
    if config.get("bias", "none") != "none":
        problems.append(f"trained biases (lora.bias={config['bias']})")
    if config.get("trainable_token_indices"):
        problems.append("trained token rows")
    if problems:
        raise GgufExportError(
            f"{run_dir}'s adapter cannot be written as a GGUF LoRA: it uses " + "; ".join(problems)
            + ". Export the merged model instead (`lorakit export gguf RUN` without --adapter-only)."
        )


def _adapter_tensors(run_dir: Path, config: dict, model_cfg, dtype: gguf.GGMLQuantizationType, alpha: float):
    spec = check_config(model_cfg)
    names = TensorNames(spec, model_cfg.num_hidden_layers)
    weights = load_file(RunFolder(run_dir).adapter_weights)
    if any("lora_embedding" in key for key in weights):
        raise GgufExportError("the adapter has LoRA on embeddings, which a GGUF LoRA cannot carry; export merged")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise GgufExportError(f"adapter tensor {key} is not a LoRA A/B matrix; export the merged model instead")
        pairs.setdefault(match.group(1), {})[match.group(2)] = tensor.to(torch.float32)
    for module, ab in sorted(pairs.items()):
        base = names(module + ".weight")
        a, b = ab["A"], ab["B"]
        rank = a.shape[0]
        module_alpha = float(_pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"]))
        scale = module_alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        b = b * (scale / (alpha / rank))  # llama.cpp applies alpha / rank
        transform = row_transform(model_cfg, spec, base)
        if transform is not None:
            b = transform(b)
        for suffix, data in (("lora_a", a), ("lora_b", b)):
            array = data.numpy()
            if dtype == gguf.GGMLQuantizationType.BF16:
                yield f"{base}.{suffix}", gguf.quants.quantize(array, dtype), dtype
            else:  # f16, and for q8_0 too: rows of length rank rarely fill Q8_0's blocks of 32
                yield f"{base}.{suffix}", array.astype(np.float16), None


def export_adapter_gguf(
    run_dir: Path, out: Path, qtype: str = "f16", with_base: bool = False, system_prompt: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path, Path]:
    """Write the run's adapter to ``out`` and a Modelfile (base + adapter); with ``with_base``, the base GGUF too.

    Returns (adapter, Modelfile, base GGUF path the Modelfile names). ``overwrite``: replace those files
    if they exist (regular files only, never through a link).
    """
    run = open_run(run_dir, SAVED_ADAPTER)
    cfg = run.read_config()
    base_name = Path(cfg.model.name.rstrip("/")).name.removesuffix(".gguf")  # the name the run's config gives
    base_path = out.with_name(f"{base_name}.{qtype}.gguf")
    written = {"--out": out, "the Modelfile": modelfile_path(out)}
    if with_base:
        written["the base GGUF"] = base_path
    check_output_files(written, overwrite)  # before the base is loaded or anything written
    preflight(run_dir, qtype)
    config = json.loads(run.adapter_config.read_text(encoding="utf-8"))
    _check_adapter(config, run_dir)
    base_folder = resolve_model_folder(cfg.model)
    model_cfg = AutoConfig.from_pretrained(base_folder, local_files_only=True)
    tokenizer = load_tokenizer(str(run_dir))
    if len(tokenizer) > model_cfg.vocab_size:
        raise GgufExportError(
            f"the run added tokens ({len(tokenizer)} against the base's {model_cfg.vocab_size}); their embeddings are "
            "not in the base GGUF. Export the merged model instead (without --adapter-only)."
        )
    spec = check_config(model_cfg)
    alpha = float(config["lora_alpha"])
    # with a k-quant base the adapter stays f16: llama.cpp adds LoRA in float either way, and it is small
    dtype = FILE_TYPES.get(qtype, FILE_TYPES["f16"])[0]
    with atomic_output(out, "the GGUF LoRA adapter") as job:
        writer = gguf.GGUFWriter(job.tmp, spec.name)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(run_dir.resolve().name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        count = 0
        for name, data, raw in _adapter_tensors(run_dir, config, model_cfg, dtype, alpha):
            writer.add_tensor(name, data, raw_dtype=raw)
            count += 1
        finish_writer(writer, job)
    log.info("wrote %s (LoRA on %d matrices, %.1f MiB)", out, count // 2, out.stat().st_size / 2**20)
    if with_base:
        # The base as the adapter was trained on it, as merge loads it: a 4-bit base (QLoRA, or a
        # checkpoint saved quantized) dequantized to exactly the values training saw.
        base = load_run_base(cfg.model, tokenizer, dtype="float32", dequantize=True)
        # The run's tokenizer: it carries the chat template the adapter was trained with.
        write_gguf(base, tokenizer, base_path, qtype, name=base_name)
    elif not base_path.is_file():
        log.warning("the Modelfile names %s as the base; write it with --with-base", base_path)
    modelfile = write_modelfile(base_path, tokenizer, system_prompt or cfg.data.system_prompt, adapter=out)
    run.record_export(out)  # verify runs it on the base its Modelfile names
    return out, modelfile, base_path
