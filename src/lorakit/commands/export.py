"""``merge`` and ``export gguf``: a run written out for plain transformers, llama.cpp and ollama."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.commands.common import err, fail, setup_logging


def merge(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by lorakit train.")],
    output: Annotated[Path, typer.Option("--out", help="Folder to write the merged model to.")],
    dtype: Annotated[str, typer.Option(help="base (the base checkpoint's dtype), float32, bfloat16 or float16.")] = "base",
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    with_: Annotated[list[Path], typer.Option(
        "--with", help="Another run on the same base to fold in too (repeatable).")] = [],
    weights: Annotated[Optional[str], typer.Option(
        help="One weight per adapter, e.g. 0.7,0.3: W + sum(weight * delta). Default 1 each.")] = None,
) -> None:
    """Fold the adapter into the base weights: a folder plain transformers loads (tokenizer and template included)."""
    setup_logging(False)
    from lorakit.export.merge import merge_run

    try:
        factors = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        fail(f"--weights {weights!r}: give numbers separated by commas, e.g. 0.7,0.3")
    merge_run(run_dir, output, dtype=dtype, overwrite=overwrite, others=with_, weights=factors)
    err.print(f"merged {run_dir} -> {output}")


def export_gguf(
    source: Annotated[Path, typer.Argument(help="A run folder (merged first), a model folder or a hub model id.")],
    output: Annotated[Path, typer.Option("--out", help="The .gguf file to write; NAME.Modelfile goes beside it.")],
    type_: Annotated[str, typer.Option("--type", help="f16, bf16, q8_0, or the k-quants q4_k_m, q5_k_m, q6_k (made by llama.cpp's quantizer: needs llama-cpp-python).")] = "f16",
    system: Annotated[Optional[str], typer.Option(help="Default system prompt for the Modelfile.")] = None,
    adapter_only: Annotated[bool, typer.Option(
        "--adapter-only", help="Write the run's LoRA adapter alone as a GGUF LoRA for llama.cpp's --lora (Ollama "
                               "0.34.1 and later refuse adapters: for Ollama export the merged model).")] = False,
    with_base: Annotated[bool, typer.Option(
        "--with-base", help="With --adapter-only: also write the base model's GGUF beside the adapter.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace --out and the files written beside it if they exist (regular files only).")] = False,
) -> None:
    """Write one GGUF file (weights, tokenizer, chat template) for llama.cpp and ollama, plus an Ollama Modelfile."""
    setup_logging(False)
    from lorakit.export.gguf import export_gguf as write
    from lorakit.export.gguf_adapter import export_adapter_gguf

    if with_base and not adapter_only:
        fail("--with-base goes with --adapter-only (a merged export already holds the base)")
    if adapter_only:
        gguf_path, modelfile, base = export_adapter_gguf(source, output, type_, with_base, system_prompt=system,
                                                        overwrite=overwrite)
        if with_base:
            err.print(f"wrote {base}")
        # Ollama 0.34.1 and later refuse ADAPTER lines: the merged export is the Ollama path.
        err.print(f"wrote {gguf_path}  (llama.cpp: llama-cli -m {base} --lora {gguf_path}) and {modelfile} "
                  f"(Ollama before 0.34.1 only; for Ollama export without --adapter-only)")
        return
    gguf_path, modelfile = write(source, output, type_, system_prompt=system, overwrite=overwrite)
    err.print(f"wrote {gguf_path} and {modelfile}  (ollama create NAME -f {modelfile})")
