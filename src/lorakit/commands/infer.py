"""``generate``, ``chat``, ``serve`` and ``eval``: a run or a model, answering."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.commands.common import (DEFAULT_CACHE, GEN, AdapterOpt, BaseOpt, BatchOpt, CacheOpt, ContextOpt,
                                     MaxNewOpt, MinPOpt, RepOpt, SeedOpt, SystemFileOpt, TargetArg, TempOpt, TopKOpt,
                                     TopPOpt, UseOpt, err, fail, fail_options, generation, out, setup_logging,
                                     system_prompt)


def generate(
    target: TargetArg,
    prompt: Annotated[Optional[str], typer.Option(help="One prompt to answer.")] = None,
    file: Annotated[
        Optional[Path], typer.Option(help="JSONL, JSON or CSV of prompts (prompt, messages or instruction).")
    ] = None,
    output: Annotated[Optional[Path], typer.Option("--out", help="Write answers as JSONL here.")] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    system_file: SystemFileOpt = None,
    max_new_tokens: MaxNewOpt = GEN.max_new_tokens,
    temperature: TempOpt = GEN.temperature,
    top_p: TopPOpt = GEN.top_p,
    top_k: TopKOpt = GEN.top_k,
    min_p: MinPOpt = GEN.min_p,
    repetition_penalty: RepOpt = GEN.repetition_penalty,
    seed: SeedOpt = GEN.seed,
    context_length: ContextOpt = GEN.context_length,
    batch_size: BatchOpt = GEN.batch_size,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    base: BaseOpt = False,
    adapter: AdapterOpt = [],
    use: UseOpt = None,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Answer one prompt or a file of prompts, batched, then print tokens per second."""
    setup_logging(False)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lorakit.infer.catalog import parse_adapter_specs
    from lorakit.infer.generate import answer_all
    from lorakit.infer.prompts import one_prompt, read_prompts, write_answers
    from lorakit.infer.session import open_session
    from lorakit.run import run_or_model

    gen = generation(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                     repetition_penalty=repetition_penalty, seed=seed, context_length=context_length,
                     batch_size=batch_size)
    system = system_prompt(system, system_file)
    if (prompt is None) == (file is None):
        fail("give exactly one of --prompt or --file")
    run = run_or_model(target)
    columns = run.read_config().data.columns if run is not None else {}  # prompts laid out as the training data
    items = read_prompts(file, system, columns) if file is not None else [one_prompt(prompt, system)]
    session = open_session(target, cache_dir, use_adapter=not base, adapters=parse_adapter_specs(adapter))
    if use is not None:
        session.use(use)
    with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=not progress or len(items) < 2) as bar:
        task = bar.add_task("generate", total=len(items))
        done = answer_all(session.model, session.tokenizer, session.template, [i.conversation for i in items],
                          [i.origin for i in items], gen, progress=lambda n: bar.advance(task, n))
    if output is not None:
        write_answers(output, items, done.answers)
        err.print(f"wrote {len(done.answers)} answers to {output}")
    else:
        for ans in done.answers:
            print(ans.text, flush=True)
    err.print(f"{len(done.answers)} answers, {done.new_tokens} new tokens in {done.seconds:.1f} s: "
              f"{done.tokens_per_second:.1f} tokens/s (batch size {gen.batch_size})", highlight=False)


def chat(
    target: TargetArg,
    adapter: AdapterOpt = [],
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    system_file: SystemFileOpt = None,
    stats: Annotated[bool, typer.Option(help="Print tokens per second after each answer (/stats toggles).")] = False,
    max_new_tokens: MaxNewOpt = GEN.max_new_tokens,
    temperature: TempOpt = GEN.temperature,
    top_p: TopPOpt = GEN.top_p,
    top_k: TopKOpt = GEN.top_k,
    min_p: MinPOpt = GEN.min_p,
    repetition_penalty: RepOpt = GEN.repetition_penalty,
    seed: SeedOpt = GEN.seed,
    context_length: ContextOpt = GEN.context_length,
    base: BaseOpt = False,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Chat in the terminal with streamed answers; the oldest turns go when the context is full.

    /reset clears the history, /stats toggles speed reports, /adapter NAME switches model, /exit quits.
    """
    setup_logging(False)
    from lorakit.infer.catalog import open_catalog, parse_adapter_specs
    from lorakit.infer.chat import chat_loop

    gen = generation(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                     repetition_penalty=repetition_penalty, seed=seed, context_length=context_length)
    system = system_prompt(system, system_file)
    catalog = open_catalog(target, cache_dir, parse_adapter_specs(adapter), use_adapter=not base)
    chat_loop(catalog, gen, system_prompt=system, stats=stats)


def serve(
    target: TargetArg,
    adapter: AdapterOpt = [],
    host: Annotated[str, typer.Option(help="Address to bind; the default is reachable from this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        Optional[str], typer.Option(envvar="LORAKIT_API_KEY", help="Require 'Authorization: Bearer KEY'.")
    ] = None,
    max_pending: Annotated[int, typer.Option(help="Requests running or waiting; more get 429.")] = 16,
    max_new_tokens: Annotated[
        int, typer.Option(help="Answer length when a request sets no max_tokens.")
    ] = GEN.max_new_tokens,
    temperature: TempOpt = GEN.temperature,
    context_length: ContextOpt = GEN.context_length,
    base: BaseOpt = False,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Serve the base and adapters over an OpenAI-compatible API, with a web chat at /."""
    setup_logging(True)
    from pydantic import ValidationError

    from lorakit.infer.catalog import open_catalog, parse_adapter_specs
    from lorakit.serve.app import LOOPBACK_NAMES, ServeConfig
    from lorakit.serve.app import serve as run_server

    # A request's own sampling settings replace these; top_p and the rest default as in a config.
    gen = generation(max_new_tokens=max_new_tokens, temperature=temperature, context_length=context_length)
    try:
        settings = ServeConfig(host=host, port=port, api_key=api_key, max_pending=max_pending)
    except ValidationError as e:
        fail_options(e)
    catalog = open_catalog(target, cache_dir, parse_adapter_specs(adapter), use_adapter=not base)
    if host not in LOOPBACK_NAMES and api_key is None:
        err.print(f"[yellow]warning:[/] serving on {host} without --api-key: only requests addressed to "
                  "localhost, 127.0.0.1 or [::1] are answered; set --api-key to serve other machines")
    err.print(f"models: {', '.join(catalog.names())}; web chat at http://{host}:{port}/", highlight=False)
    run_server(catalog, gen, settings)


def evaluate(
    target: Annotated[str, typer.Argument(help="A run folder, or a model (name, hub id, folder, .gguf) with --data.")],
    data: Annotated[Optional[list[Path]], typer.Option(help="Held-out samples (repeatable); default: data.eval.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Score only the first N samples, for a quick look.")] = None,
    scorer: Annotated[Optional[str], typer.Option(help="Your per-sample score: file.py:fn or module:fn.")] = None,
    reward: Annotated[Optional[list[str]], typer.Option(
        help="Also average this reward function over the answers (builtin:NAME or file.py:function, repeatable); "
        "a grpo run's own rewards are always scored.")] = None,
    examples: Annotated[Optional[int], typer.Option(help="How many most-changed answers to show.")] = None,
    output: Annotated[Optional[Path], typer.Option("--out", help="Folder for eval.json/md; default: the run.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Default: the run's generation setting.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Default: the run's generation setting.")] = None,
    base: BaseOpt = False,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Score base and tuned model side by side on held-out samples; writes eval.json and eval.md."""
    setup_logging(False)
    from pydantic import ValidationError

    from lorakit.config import RunConfig
    from lorakit.eval.results import print_comparison
    from lorakit.eval.run import evaluate as run_eval
    from lorakit.eval.run import run_rewards
    from lorakit.infer.session import open_session
    from lorakit.run import run_or_model
    from lorakit.train.methods import METHODS

    run = run_or_model(target)
    is_run = run is not None
    # A plain model has no run config: the defaults stand in for it, and the table has one column.
    run_cfg = run.read_config() if run is not None else RunConfig()
    files = data or run_cfg.data.eval
    if not files:
        fail("no evaluation data: pass --data FILE" + (" (the run has no data.eval)" if is_run else ""))
    overrides = {k: v for k, v in {"limit": limit, "scorer": scorer, "examples": examples}.items() if v is not None}
    gen_overrides = {k: v for k, v in {"max_new_tokens": max_new_tokens, "batch_size": batch_size}.items()
                     if v is not None}
    try:
        # Validated again, so --limit 0 is refused as eval.limit=0 in a config would be.
        settings = type(run_cfg.eval).model_validate({**run_cfg.eval.model_dump(), **overrides})
        gen = type(run_cfg.generation).model_validate({**run_cfg.generation.model_dump(), **gen_overrides})
    except ValidationError as e:
        fail_options(e)
    rewards = run_rewards(run_cfg, reward)  # before the model loads: a wrong name fails at once
    session = open_session(target, cache_dir, use_adapter=not base)
    result = run_eval(session, files, run_cfg.data, gen, settings,
                      output or (Path(target) if is_run else Path.cwd()), console=err,
                      reads=METHODS[run_cfg.method].rows, rewards=rewards)
    print_comparison(out, result)
