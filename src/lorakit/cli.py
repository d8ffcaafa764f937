"""The ``lorakit`` command. The configuration is built here and nowhere else."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from lorakit.config import ConfigError, GenerationConfig, RunConfig, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune, chat with and evaluate LoRA adapters.")
err = Console(stderr=True, soft_wrap=True)
out = Console()

DEFAULT_CACHE = Path("~/.cache/lorakit").expanduser()
CacheOpt = Annotated[Path, typer.Option(help="Cache of converted GGUF models.")]
BaseOpt = Annotated[bool, typer.Option("--base", help="Ignore the run's adapter: use the base model alone.")]
UseOpt = Annotated[Optional[str], typer.Option(help="Answer with this adapter (a run folder's name).")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("lorakit").setLevel(logging.INFO)
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config; defaults apply to what it leaves out.")] = None,
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a key, e.g. --set lora.rank=8")] = [],
    resume: Annotated[
        Optional[str], typer.Option(help="Continue a killed run: alone, from its latest complete checkpoint; or give one.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Delete the run already in output_dir (adapter, checkpoints, metrics) and start afresh.")
    ] = False,
    nproc: Annotated[
        int, typer.Option(help="Data-parallel processes on this machine, started through torchrun (gloo on CPU, NCCL on GPUs).")
    ] = 1,
    verbose: bool = True,
) -> None:
    """Fine-tune a LoRA adapter; writes runs/<name>/ (adapter, tokenizer, config, metrics).

    One run at a time per output folder: --resume continues the run there, --overwrite replaces it.

    Ctrl-C or SIGTERM saves a checkpoint first, and says how to resume.
    """
    _setup_logging(verbose)
    try:
        cfg = load_config(config, set_)
    except ConfigError as e:
        _fail(str(e))
    if nproc != 1:
        _launch(nproc, config, set_, resume, overwrite, verbose, cfg)
        return
    from lorakit.data.sources import DataError
    from lorakit.model.gguf_cache import ModelNotFoundError
    from lorakit.model.quantization import QuantizationUnavailableError
    from lorakit.train import recipe

    from lorakit.train.trainer import NonFiniteError

    try:
        if cfg.eval.at_end and cfg.eval.scorer:  # a typo in the scorer fails now, not after training
            from lorakit.eval.scorer import load_scorer

            load_scorer(cfg.eval.scorer)
        summary = recipe.run(cfg, resume=resume, overwrite=overwrite)
    except recipe.TrainingInterrupted as e:
        err.print(f"[yellow]{e}. Continue with: {_resume_command(config, set_)}[/]", highlight=False)
        raise typer.Exit(128 + e.signum)  # the shell's convention: 130 after Ctrl-C, 143 after SIGTERM
    except (DataError, ModelNotFoundError, NonFiniteError, QuantizationUnavailableError,
            FileNotFoundError, ValueError) as e:
        _fail(str(e))
    from lorakit.train.distributed import is_main_process

    if not is_main_process():
        return
    table = Table(title=f"run {cfg.name} -> {cfg.resolved_output_dir()}", show_header=False)
    for key in ("steps", "train_loss", "eval_loss", "train_seconds", "tokens_seen", "loss_tokens_seen",
                "tokens_per_second", "loss_tokens_per_second", "precision"):
        value = summary[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) and key.endswith("loss") else str(value))
    trainable, total = summary["trainable_parameters"], summary["total_parameters"]
    table.add_row("trainable_parameters", f"{trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
    table.add_row("model_memory", f"{summary['memory_footprint_bytes'] / 2**20:.1f} MiB")
    table.add_row("peak_rss", f"{summary['peak_rss_bytes'] / 2**30:.2f} GiB")
    if summary["cuda_peak_reserved_bytes"]:
        table.add_row("cuda_peak_reserved", f"{summary['cuda_peak_reserved_bytes'] / 2**30:.2f} GiB")
    out.print(table)
    if cfg.eval.at_end:
        from lorakit.eval.report import print_comparison, read_report

        print_comparison(out, read_report(cfg.resolved_output_dir()))


def _resume_command(config: Path | None, set_: list[str]) -> str:
    """The command that continues this run: the same config and overrides, plus --resume."""
    import shlex

    words = ["lorakit", "train", *([str(config)] if config is not None else [])]
    words += [w for assignment in set_ for w in ("--set", assignment)]
    return shlex.join([*words, "--resume"])


def _launch(nproc: int, config: Path | None, set_: list[str], resume: str | None, overwrite: bool, verbose: bool,
            cfg: RunConfig) -> None:
    """Start ``nproc`` copies of this command through torchrun; errors that all ranks would hit stop here once."""
    import torch

    from lorakit.train import checkpoints, distributed, run_folder

    try:
        distributed.check_supported(cfg.train.distributed, torch.cuda.is_available())
        # Resolved once here, so every rank is handed the same checkpoint.
        resume_from = checkpoints.resolve_resume(resume, cfg.resolved_output_dir() / "checkpoints")
        # Rank 0 takes the folder's lock and checks it again; a taken or occupied folder fails here once.
        run_folder.check_available(cfg.resolved_output_dir(), fresh=resume_from is None and not overwrite)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    child = ["train", *([str(config)] if config is not None else [])]
    child += [f"--set={assignment}" for assignment in set_]
    child += [f"--resume={resume_from}"] if resume_from is not None else []
    child += ["--overwrite"] if overwrite else []  # rank 0 takes the folder's lock and checks it
    child += [] if verbose else ["--no-verbose"]
    try:
        distributed.launch(nproc, child)
    except ValueError as e:
        _fail(str(e))
    except distributed.LaunchError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(1)


# Sampling options shared by generate, chat and serve (see GenerationConfig for what each does).
MaxNewOpt = Annotated[int, typer.Option(help="Longest answer, in tokens.")]
TempOpt = Annotated[float, typer.Option(help="0 is greedy.")]
TopPOpt = Annotated[float, typer.Option(help="Nucleus sampling: keep the likeliest tokens up to this mass.")]
TopKOpt = Annotated[int, typer.Option(help="Sample among the k likeliest tokens; 0: no limit.")]
MinPOpt = Annotated[float, typer.Option(help="Drop tokens below min-p x the top probability; 0: off.")]
RepOpt = Annotated[float, typer.Option(help="Above 1 discourages repeats; 1: off.")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Seed for sampling, for reproducible answers.")]
ContextOpt = Annotated[Optional[int], typer.Option(help="Prompt + answer limit in tokens; default: the model's.")]
SystemFileOpt = Annotated[Optional[Path], typer.Option(help="Read the system prompt from this file.")]
AdapterOpt = Annotated[
    list[str], typer.Option("--adapter", help="Another adapter on the same base, as NAME=PATH (repeatable).")
]


def _generation(max_new_tokens: int, temperature: float, top_p: float, top_k: int, min_p: float,
                repetition_penalty: float, seed: Optional[int], context_length: Optional[int],
                batch_size: int = 1) -> GenerationConfig:
    try:
        return GenerationConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            repetition_penalty=repetition_penalty, seed=seed, context_length=context_length, batch_size=batch_size,
        )
    except ValueError as e:
        _fail(f"invalid generation option: {e}")


def _system_prompt(system: Optional[str], system_file: Optional[Path]) -> Optional[str]:
    if system is not None and system_file is not None:
        _fail("give --system or --system-file, not both")
    if system_file is None:
        return system
    try:
        return system_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"cannot read the system prompt from {system_file}: {e}")


@app.command()
def generate(
    target: Annotated[str, typer.Argument(help="A run folder, or a model (name, hub id, folder or .gguf).")],
    prompt: Annotated[Optional[str], typer.Option(help="One prompt to answer.")] = None,
    file: Annotated[
        Optional[Path], typer.Option(help="JSONL, JSON or CSV of prompts (prompt, messages or instruction).")
    ] = None,
    output: Annotated[Optional[Path], typer.Option("--out", help="Write answers as JSONL here.")] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    system_file: SystemFileOpt = None,
    max_new_tokens: MaxNewOpt = 256,
    temperature: TempOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    min_p: MinPOpt = 0.0,
    repetition_penalty: RepOpt = 1.0,
    seed: SeedOpt = None,
    context_length: ContextOpt = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass (left-padded).")] = 16,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    base: BaseOpt = False,
    adapter: AdapterOpt = [],
    use: UseOpt = None,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Answer one prompt or a file of prompts, batched, then print tokens per second."""
    _setup_logging(False)
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lorakit.data.sources import DataError
    from lorakit.infer.generate import context_length as context_of
    from lorakit.infer.generate import generate_ids, prompt_ids
    from lorakit.infer.prompts import Prompt, read_prompts
    from lorakit.infer.session import open_session

    gen = _generation(max_new_tokens, temperature, top_p, top_k, min_p, repetition_penalty, seed,
                      context_length, batch_size)
    system = _system_prompt(system, system_file)
    if (prompt is None) == (file is None):
        _fail("give exactly one of --prompt or --file")
    try:
        if file is not None:
            items = read_prompts(file, system)
        else:
            turns = [{"role": "system", "content": system}] if system else []
            items = [Prompt("--prompt", turns + [{"role": "user", "content": prompt}])]
        # --adapter takes NAME=PATH (as chat and serve do) or a bare run folder; --use picks by folder name.
        others = [spec.split("=", 1)[-1] for spec in adapter]
        session = open_session(target, cache_dir, use_adapter=not base, others=others)
        if use is not None:
            session.use(use)
    except (DataError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    ids = [prompt_ids(session.tokenizer, session.template, item.conversation) for item in items]
    limit = context_of(session.model, gen)
    too_long = [f"{item.origin} ({len(p)} tokens)" for item, p in zip(items, ids) if len(p) + gen.max_new_tokens > limit]
    if too_long:
        _fail(f"{len(too_long)} prompt(s) plus --max-new-tokens {gen.max_new_tokens} exceed the {limit}-token "
              f"context: {'; '.join(too_long[:5])}{' ...' if len(too_long) > 5 else ''}. "
              "Shorten them or lower --max-new-tokens.")
    started = time.perf_counter()
    with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=not progress or len(items) < 2) as bar:
        task = bar.add_task("generate", total=len(items))
        answers = generate_ids(session.model, session.tokenizer, ids, gen, session.template.end_token_ids,
                               progress=lambda n: bar.advance(task, n))
    seconds = time.perf_counter() - started
    if output is not None:
        with output.open("w", encoding="utf-8") as fh:
            for item, ans in zip(items, answers):
                row = {"messages": item.conversation, "answer": ans.text, "prompt_tokens": ans.prompt_tokens,
                       "new_tokens": ans.new_tokens, "finish_reason": ans.finish_reason, "source": item.origin}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        err.print(f"wrote {len(answers)} answers to {output}")
    else:
        for ans in answers:
            print(ans.text, flush=True)
    new_tokens = sum(a.new_tokens for a in answers)
    rate = new_tokens / seconds if seconds > 0 else 0.0
    err.print(f"{len(answers)} answers, {new_tokens} new tokens in {seconds:.1f} s: {rate:.1f} tokens/s "
              f"(batch size {gen.batch_size})", highlight=False)


@app.command()
def chat(
    target: Annotated[str, typer.Argument(help="A run folder, or a model (name, hub id, folder or .gguf).")],
    adapter: AdapterOpt = [],
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    system_file: SystemFileOpt = None,
    stats: Annotated[bool, typer.Option(help="Print tokens per second after each answer (/stats toggles).")] = False,
    max_new_tokens: MaxNewOpt = 256,
    temperature: TempOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    min_p: MinPOpt = 0.0,
    repetition_penalty: RepOpt = 1.0,
    seed: SeedOpt = None,
    context_length: ContextOpt = None,
    base: BaseOpt = False,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Chat in the terminal with streamed answers; the oldest turns go when the context is full.

    /reset clears the history, /stats toggles speed reports, /adapter NAME switches model, /exit quits.
    """
    _setup_logging(False)
    from lorakit.infer.catalog import open_catalog, parse_adapter_specs
    from lorakit.infer.chat import chat_loop

    gen = _generation(max_new_tokens, temperature, top_p, top_k, min_p, repetition_penalty, seed, context_length)
    system = _system_prompt(system, system_file)
    try:
        catalog = open_catalog(target, cache_dir, parse_adapter_specs(adapter), use_adapter=not base)
        chat_loop(catalog, gen, system_prompt=system, stats=stats)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))


@app.command()
def serve(
    target: Annotated[str, typer.Argument(help="A run folder, or a model (name, hub id, folder or .gguf).")],
    adapter: AdapterOpt = [],
    host: Annotated[str, typer.Option(help="Address to bind; the default is reachable from this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        Optional[str], typer.Option(envvar="LORAKIT_API_KEY", help="Require 'Authorization: Bearer KEY'.")
    ] = None,
    max_pending: Annotated[int, typer.Option(help="Requests running or waiting; more get 429.")] = 16,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length when a request sets no max_tokens.")] = 256,
    temperature: TempOpt = 0.0,
    context_length: ContextOpt = None,
    base: BaseOpt = False,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Serve the base and adapters over an OpenAI-compatible API, with a web chat at /."""
    _setup_logging(True)
    from lorakit.config import ServeConfig
    from lorakit.infer.catalog import open_catalog, parse_adapter_specs
    from lorakit.serve.app import serve as run_server

    gen = _generation(max_new_tokens, temperature, 1.0, 0, 0.0, 1.0, None, context_length)
    try:
        settings = ServeConfig(host=host, port=port, api_key=api_key, max_pending=max_pending)
        catalog = open_catalog(target, cache_dir, parse_adapter_specs(adapter), use_adapter=not base)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        err.print(f"[yellow]warning:[/] serving on {host} without --api-key: only requests addressed to "
                  "localhost, 127.0.0.1 or [::1] are answered; set --api-key to serve other machines")
    err.print(f"models: {', '.join(catalog.names())}; web chat at http://{host}:{port}/", highlight=False)
    run_server(catalog, gen, settings)


@app.command("eval")
def evaluate(
    target: Annotated[str, typer.Argument(help="A run folder, or a model (name, hub id, folder, .gguf) with --data.")],
    data: Annotated[Optional[list[Path]], typer.Option(help="Held-out samples (repeatable); default: data.eval.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Score only the first N samples, for a quick look.")] = None,
    scorer: Annotated[Optional[str], typer.Option(help="Your per-sample score: file.py:fn or module:fn.")] = None,
    examples: Annotated[Optional[int], typer.Option(help="How many most-changed answers to show.")] = None,
    output: Annotated[Optional[Path], typer.Option("--out", help="Folder for eval.json/md; default: the run.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Default: the run's generation setting.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Default: the run's generation setting.")] = None,
    base: BaseOpt = False,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Score base and tuned model side by side on held-out samples; writes eval.json and eval.md."""
    _setup_logging(False)
    from lorakit.config import RunConfig, read_saved_config
    from lorakit.data.sources import DataError
    from lorakit.eval.report import print_comparison
    from lorakit.eval.run import evaluate as run_eval
    from lorakit.eval.scorer import ScorerError
    from lorakit.infer.session import RUN_CONFIG, is_run_dir, open_session

    is_run = is_run_dir(target)
    # A plain model has no run config: the defaults stand in for it, and the table has one column.
    run_cfg = read_saved_config(Path(target) / RUN_CONFIG) if is_run else RunConfig()
    files = data or run_cfg.data.eval
    if not files:
        _fail("no evaluation data: pass --data FILE" + (" (the run has no data.eval)" if is_run else ""))
    overrides = {k: v for k, v in {"limit": limit, "scorer": scorer, "examples": examples}.items() if v is not None}
    gen_overrides = {k: v for k, v in {"max_new_tokens": max_new_tokens, "batch_size": batch_size}.items()
                     if v is not None}
    try:
        # Validated again, so --limit 0 is refused as eval.limit=0 in a config would be.
        settings = type(run_cfg.eval).model_validate({**run_cfg.eval.model_dump(), **overrides})
        gen = type(run_cfg.generation).model_validate({**run_cfg.generation.model_dump(), **gen_overrides})
        session = open_session(target, cache_dir, use_adapter=not base)
        result = run_eval(session, files, run_cfg.data, gen, settings,
                          output or (Path(target) if is_run else Path.cwd()), console=err, method=run_cfg.method)
    except (DataError, ScorerError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    print_comparison(out, result)


@app.command()
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
    _setup_logging(False)
    from lorakit.export.merge import merge_run
    from lorakit.model.quantization import QuantizationUnavailableError

    try:
        factors = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        _fail(f"--weights {weights!r}: give numbers separated by commas, e.g. 0.7,0.3")
    try:
        merge_run(run_dir, output, dtype=dtype, overwrite=overwrite, others=with_, weights=factors)
    except (FileNotFoundError, QuantizationUnavailableError, ValueError) as e:
        _fail(str(e))
    err.print(f"merged {run_dir} -> {output}")


export_app = typer.Typer(no_args_is_help=True, help="Export a run or a model folder for other runtimes.")
app.add_typer(export_app, name="export")


@export_app.command("gguf")
def export_gguf(
    source: Annotated[Path, typer.Argument(help="A run folder (merged first), a model folder or a hub model id.")],
    output: Annotated[Path, typer.Option("--out", help="The .gguf file to write; NAME.Modelfile goes beside it.")],
    type_: Annotated[str, typer.Option("--type", help="f16, bf16 or q8_0 (k-quants: see the README).")] = "f16",
    system: Annotated[Optional[str], typer.Option(help="Default system prompt for the Modelfile.")] = None,
    adapter_only: Annotated[bool, typer.Option(
        "--adapter-only", help="Write the run's LoRA adapter alone as a GGUF LoRA (llama.cpp --lora, ollama ADAPTER).")] = False,
    with_base: Annotated[bool, typer.Option(
        "--with-base", help="With --adapter-only: also write the base model's GGUF beside the adapter.")] = False,
) -> None:
    """Write one GGUF file (weights, tokenizer, chat template) for llama.cpp and ollama, plus an Ollama Modelfile."""
    _setup_logging(False)
    from lorakit.export.gguf import export_gguf as write
    from lorakit.export.gguf_adapter import export_adapter_gguf
    from lorakit.model.quantization import QuantizationUnavailableError

    if with_base and not adapter_only:
        _fail("--with-base goes with --adapter-only (a merged export already holds the base)")
    try:
        if adapter_only:
            gguf_path, modelfile, base = export_adapter_gguf(source, output, type_, with_base, system_prompt=system)
            if with_base:
                err.print(f"wrote {base}")
        else:
            gguf_path, modelfile = write(source, output, type_, system_prompt=system)
    except (FileNotFoundError, QuantizationUnavailableError, ValueError) as e:
        _fail(str(e))
    err.print(f"wrote {gguf_path} and {modelfile}  (ollama create NAME -f {modelfile})")


data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Look at training data before training.")
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    target: Annotated[str, typer.Argument(help="A config (.yaml), or a data file, glob, folder or hub dataset.")],
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a key, e.g. --set data.format=dolly")] = [],
    json_out: Annotated[bool, typer.Option("--json", help="Print the same as machine-readable JSON.")] = False,
    samples: Annotated[int, typer.Option(help="Rendered samples to show.")] = 2,
    limit: Annotated[Optional[int], typer.Option(help="Encode only the first N samples of each split.")] = None,
    plain: Annotated[bool, typer.Option(help="Mark trained text with [[ ]] even in a terminal.")] = False,
) -> None:
    """The data doctor: shapes, template, counts with reasons, lengths, loss share and masked samples.

    Exits with 1 when it finds an error that would make training wrong.
    """
    _setup_logging(False)
    from lorakit.config import DataSource
    from lorakit.data.inspection import inspect_data
    from lorakit.data.pair_dataset import holds_pairs
    from lorakit.data.sources import DataError
    from lorakit.data.templates import resolve_template
    from lorakit.data.view import print_inspection
    from lorakit.model.gguf_cache import ModelNotFoundError
    from lorakit.model.loader import load_tokenizer, resolve_model_folder

    try:
        if target.endswith((".yaml", ".yml")):
            cfg = load_config(Path(target), set_)
        else:
            cfg = load_config(None, set_)
            local = Path(target).expanduser()
            cfg.data.train = [DataSource(path=str(local.resolve()) if local.exists() else target)]
    except (ConfigError, ValueError) as e:
        _fail(str(e))
    try:
        tokenizer = load_tokenizer(resolve_model_folder(cfg.model, weights=False), cfg.model.trust_remote_code)
        template = resolve_template(tokenizer, cfg.data.template, cfg.data.think)
        pairs = cfg.method != "sft" or holds_pairs(cfg.data.train, cfg.data)
        result = inspect_data(
            cfg.data, tokenizer, template, model_name=cfg.model.name, samples=samples, limit=limit, pairs=pairs
        )
    except (DataError, ModelNotFoundError, ValueError) as e:
        _fail(str(e))
    if json_out:
        print(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
    else:
        print_inspection(out, result, plain=plain or not out.is_terminal)
    if result.has_errors:
        raise typer.Exit(1)


runs_app = typer.Typer(no_args_is_help=True, help="Look at training runs.")
app.add_typer(runs_app, name="runs")


@runs_app.command("show")
def runs_show(
    folder: Annotated[Path, typer.Argument(help="A run folder (finished or still running).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Summarize a run: status, steps, losses, checkpoints, speed and memory."""
    from lorakit.train.run_status import describe_run

    try:
        info = describe_run(folder)
    except FileNotFoundError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=f"run {folder}", show_header=False)
    for key, value in info.items():
        if key == "peak_rss_bytes" and value:
            key, value = "peak_rss", f"{value / 2**30:.2f} GiB"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        table.add_row(key, "-" if value is None else str(value))
    out.print(table)


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The model families lorakit knows: LoRA target presets, end-of-turn tokens, embeddings, quirks."""
    from lorakit.model.families import FAMILIES, describe

    if as_json:
        print(json.dumps([describe(f) for f in FAMILIES], indent=2))
        return
    table = Table(title="model families (lora.target_modules: attention, attention+mlp or all-linear)")
    for column in ("family", "model_type", "attention", "+ mlp", "end of turn", "embeddings (modules_to_save)"):
        table.add_column(column)
    for f in FAMILIES:
        embeddings = f"{f.embedding} + {f.output}: {f.tie_text()}"
        table.add_row(f.name, ", ".join(f.model_types), ", ".join(f.attention), ", ".join(f.mlp),
                      " ".join(f.end_tokens), embeddings)
    out.print(table)
    for f in FAMILIES:
        out.print(f"[bold]{f.name}[/] ({f.examples})", highlight=False)
        for quirk in f.quirks:
            out.print(f"  - {quirk}", highlight=False, markup=False)
    out.print("lora.modules_to_save: [embeddings] trains both embeddings under the model's own names "
              "(tied ones as one shared matrix).", highlight=False)
    out.print("Any other model trains with all-linear and its tokenizer's own chat template.", highlight=False)


def _optional_resume_value(argv: list[str]) -> list[str]:
    """Let ``--resume`` stand alone (meaning the latest checkpoint) as well as take a path."""
    fixed = list(argv)
    for i, arg in enumerate(fixed):
        if arg == "--resume" and (i + 1 == len(fixed) or fixed[i + 1].startswith("-")):
            fixed[i] = "--resume=latest"
    return fixed


def main() -> None:  # pragma: no cover - console entry point
    sys.argv[1:] = _optional_resume_value(sys.argv[1:])
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
