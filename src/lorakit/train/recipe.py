"""The fine-tuning recipe, top to bottom: setup, train, save, and eval.at_end.

Read this file to know what ``lorakit train`` does; ``run`` does all of it, from the command
or from Python. Each stage gets only its section of the config; the recipe is the one place
that sees all of it. What differs by training method is the method's (``train/methods``).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import EarlyStoppingCallback, PrinterCallback, TrainerCallback, set_seed

from lorakit.config import ConfigError, RunConfig
from lorakit.data.pipeline import Splits, build_splits
from lorakit.data.report import DataReport
from lorakit.eval.run import evaluate_at_end
from lorakit.eval.scorer import UserScorer, load_scorer
from lorakit.hardware.memory import cuda_peak_bytes, peak_rss_bytes
from lorakit.hardware.threads import set_compute_threads
from lorakit.model.loader import load_model, resolve_model_folder
from lorakit.model.adapter import check_same_base
from lorakit.model.lora import apply_lora
from lorakit.model.quantization import is_quantized
from lorakit.model.setup import TextSetup, training_setup
from lorakit.model.tokens import fit_embeddings
from lorakit.outputs import staged_into
from lorakit.run import SAVED_ADAPTER, TRAINED_BY, RunFolder, RunSummary, of_checkpoint, open_run, read_metrics
from lorakit.train import checkpoints, distributed, run_folder
from lorakit.train.callbacks import LossPlot, MetricsLog, RichProgress, StopOnInterrupt
from lorakit.train.methods import Method, method_for
from lorakit.train.plan import Plan, resolve_plan
from lorakit.train.preference import start_from_adapter
from lorakit.train.tracking import close_trackers, tracker_callbacks
from lorakit.train.trainer import LorakitTrainer, training_arguments

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run after saving a checkpoint at ``step`` in ``checkpoints``."""

    def __init__(self, signum: int, step: int, checkpoints: Path):
        self.signum, self.step, self.checkpoints = signum, step, checkpoints
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        super().__init__(f"{name}: interrupted at step {step}; a checkpoint was saved in {checkpoints}")


def _trim_metrics(path: Path, step: int) -> None:
    """A resumed run redoes the steps after its checkpoint; drop their old log lines."""
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def run(cfg: RunConfig, resume: str | None = None, hooks: list[TrainerCallback] | None = None,
        overwrite: bool = False) -> RunSummary:
    """Fine-tune as configured, then (``eval.at_end``) score base against tuned on data.eval: what
    ``lorakit train`` does. Returns the run summary, also written to summary.json.

    ``resume``: None for a fresh run, "latest" or a checkpoint path to continue one.
    ``hooks``: extra Trainer callbacks (the way to observe or steer a run from code).
    ``overwrite``: a fresh run may delete the run already in the output folder.
    """
    scorer = check_start(cfg, resume, overwrite)
    method = method_for(cfg)  # its own settings load here (GRPO's reward files), before the folder is taken
    # --- several processes (lorakit train --nproc N, torchrun, accelerate launch): the Trainer
    # does data parallelism; here only rank 0 writes run files, and all ranks resume alike.
    on_gpu = torch.cuda.is_available()
    distributed.init_process_group(cfg.train.distributed, on_gpu)
    distributed.quiet_other_ranks()
    main = distributed.is_main_process()

    # --- the run folder: ours alone while we train; a fresh run never writes over an old one
    out = cfg.output_dir
    with run_folder.owned(out, main):
        resume_from = distributed.same_on_all_ranks(checkpoints.resolve_resume(resume, RunFolder(out).checkpoints))
        if main and resume_from is None:
            run_folder.check_fresh(out, overwrite)
        elif main:
            # The checkpoint's own run folder (usually this one) holds the config it was trained with.
            run_folder.check_resume(of_checkpoint(resume_from), cfg.model_dump(mode="json"))
        summary = _train(cfg, method, out, resume_from, hooks or [], on_gpu, main)
        if cfg.eval.at_end and main:  # base against tuned on the held-out data: eval.json, eval.md, summary.eval
            evaluate_at_end(out, summary, method.rows, cfg.train.progress_bar, scorer)
    return summary


def check_start(cfg: RunConfig, resume: str | None, overwrite: bool) -> UserScorer | None:
    """What refuses a run before anything loads: an unsupported strategy, contradictory flags, a scorer
    that does not load (it would fail only after training). Returns that scorer."""
    distributed.check_supported(cfg.train.distributed, torch.cuda.is_available())
    if resume is not None and overwrite:
        raise run_folder.RunFolderError("give --resume (continue the run) or --overwrite (replace it), not both")
    if cfg.model.adapter is not None:  # the run to start from: refused before the folder is taken or anything loads
        open_run(cfg.model.adapter, SAVED_ADAPTER, f"model.adapter {TRAINED_BY}, e.g. runs/sft")
    return load_scorer(cfg.eval.scorer) if cfg.eval.at_end and cfg.eval.scorer else None


def launch(cfg: RunConfig, nproc: int, command: list[str], resume: str | None, overwrite: bool) -> None:
    """Run ``command`` (this ``lorakit train``) as ``nproc`` processes through torchrun.

    What every rank would refuse is refused here once, before any starts; the checkpoint to
    resume from is chosen once, so every rank is handed the same one. Rank 0 takes the folder's
    lock and checks it again.
    """
    check_start(cfg, resume, overwrite)
    out = cfg.output_dir
    resume_from = checkpoints.resolve_resume(resume, RunFolder(out).checkpoints)
    run_folder.check_available(out, fresh=resume_from is None, overwrite=overwrite)
    command = [*command, *([f"--resume={resume_from}"] if resume_from is not None else [])]
    distributed.launch(nproc, [*command, *(["--overwrite"] if overwrite else [])])  # a failed rank: LaunchError


def _train(cfg: RunConfig, method: Method, out: Path, resume_from: Path | None, hooks: list[TrainerCallback],
           on_gpu: bool, main: bool) -> RunSummary:
    run = RunFolder(out)
    ckpt_dir = run.checkpoints
    for partial in checkpoints.incomplete(ckpt_dir):
        log.warning("ignoring %s: its write never finished (the run was killed during it)", partial)
    set_seed(cfg.seed)
    set_compute_threads()

    # --- setup: tokenizer and data first, so bad data fails before the model loads (and, for a
    # hub model, before its weights are downloaded)
    text = training_setup(cfg.model, cfg.data)
    tokenizer, template = text.tokenizer, text.template
    method.use_text(tokenizer, template)
    splits = build_splits(cfg.data, tokenizer, template, method.rows)  # samples, pairs, answers: what it reads
    for report in splits.reports:
        for line in report.lines():
            log.info("data %s", line)
    if cfg.train.early_stopping_patience and not splits.eval:
        raise ConfigError("train.early_stopping_patience needs eval data (data.eval)")

    base, model = _model(cfg, method, text, out)
    reserved_before = torch.cuda.memory_reserved() if on_gpu else 0
    plan = resolve_plan(cfg.model, cfg.train, cfg.method, model)
    log.info("plan (train/plan.py: what each setting comes to here):\n  %s", "\n  ".join(plan.lines()))

    trainer = _trainer(cfg, method, model, tokenizer.pad_token_id, splits, plan, on_gpu, is_quantized(base))
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; our bar and metrics.jsonl replace it
    if resume_from is not None:
        trainer.resume_totals(resume_from)  # so the summary counts the steps before the resume too
    if resume_from is not None and main:
        _trim_metrics(run.metrics_file, int(resume_from.name.split("-")[-1]))
        log.info("resuming from %s", resume_from)
    stopper = StopOnInterrupt()
    trackers = tracker_callbacks(cfg.train.report_to, out) if main else []
    for callback in [*_callbacks(cfg, trainer, run, method, stopper, fresh=resume_from is None and main),
                     *trackers, *hooks]:
        trainer.add_callback(callback)

    # --- train
    if main:
        run.write_config(cfg)  # written first, so a killed run can be resumed and inspected
    started = time.monotonic()
    stopper.install()
    finished = False
    try:
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            stopper.uninstall()
        elapsed = time.monotonic() - started
        trainer.restore_model()  # evaluation, generation and saving see the model as it was loaded
        stopper.agree()  # a signal after the last step's end: every rank stops here, or none does
        if stopper.interrupted:
            raise TrainingInterrupted(stopper.signal, trainer.state.global_step, ckpt_dir)
        # The kept adapter (the best one when keep_best) evaluated once more, logged apart from
        # the in-training evaluations so the eval curve is not given a duplicate last point.
        eval_loss = trainer.evaluate(metric_key_prefix="final_eval")["final_eval_loss"] if splits.eval else None
        finished = True
    finally:
        close_trackers(trackers, ok=finished)  # a failed run is marked failed in the tracker, not left open

    # The whole run's counts: a resumed run starts from its checkpoint's (see LorakitTrainer.resume_totals).
    # Collectives: every rank takes part before the others return.
    totals = distributed.sum_over_ranks(trainer.count.tokens, trainer.count.loss_tokens)
    trained = Trained(result.global_step, trainer.whole_run_train_loss(), eval_loss, elapsed, *totals)
    # fsdp and ZeRO-3 hold each weight in shards: every rank takes part in gathering them whole, as
    # the Trainer does for its checkpoints (saved as they are, the adapter would be rank 0's shards).
    sharded = distributed.shards_weights(cfg.train.distributed)
    whole = trainer.accelerator.get_state_dict(trainer.model) if sharded else None
    if not main:
        return RunSummary(trained.steps, trained.train_loss, trained.eval_loss)

    # --- save: the adapter in peft's layout (the best one when keep_best), the tokenizer
    # carrying the template we trained with (so chat and serving render exactly the same
    # text), and the resolved config. Saved apart and moved in: a half-written adapter never looks like one.
    tokenizer.chat_template = template.jinja
    with staged_into(out, "the trained adapter and tokenizer") as job:
        # selected: the adapter trained, not a frozen reference
        model.save_pretrained(job.tmp, selected_adapters=[model.active_adapter], state_dict=whole)
        tokenizer.save_pretrained(job.tmp)
    summary = _summary(cfg, method, trainer, model, trained, template.name, plan, splits.reports, reserved_before)
    summary.resumed_from = str(resume_from) if resume_from else None
    run.write_summary(summary)
    return summary


def _model(cfg: RunConfig, method: Method, text: TextSetup, out: Path) -> tuple[torch.nn.Module, PeftModel]:
    """The base, loaded as configured, and the model that trains: a new adapter on it, or a run's to continue."""
    source = resolve_model_folder(cfg.model)
    base = load_model(source, cfg.model.dtype, cfg.model.quantization, cfg.model.trust_remote_code,
                      sharded=distributed.shards_weights(cfg.train.distributed))
    fit_embeddings(base, text.tokenizer)
    if cfg.model.adapter is not None:  # continue a run's adapter (a method's reference starts as it too)
        check_same_base(out, cfg.model, cfg.model.adapter, text.tokenizer)
        return base, start_from_adapter(base, cfg.model.adapter, with_reference=method.reference)
    return base, apply_lora(base, cfg.lora, new_tokens=bool(text.new_tokens))


def _trainer(cfg: RunConfig, method: Method, model: PeftModel, pad_token_id: int, splits: Splits, plan: Plan,
             on_gpu: bool, quantized: bool) -> LorakitTrainer:
    """The Trainer, told the run's settings, the method and the plan."""
    args = training_arguments(cfg.train, cfg.output_dir, cfg.seed, plan.precision.value, on_gpu,
                              has_eval=bool(splits.eval), quantized=quantized, best=method.best)
    return LorakitTrainer(
        model=model,
        args=args,
        train_dataset=method.train_rows(splits.train),
        eval_dataset=method.train_rows(splits.eval) or None,
        data_collator=method.collator(pad_token_id, cfg.train.packing),
        method=method,
        on_nonfinite=cfg.train.on_nonfinite,
        keep_checkpoints=cfg.train.save_total_limit,
        selective_loss=cfg.train.selective_loss,
        loss_chunk_size=cfg.train.loss_chunk_size,
        **plan.trainer_options(),
    )


@dataclass
class Trained:
    """What the training loop came to, for the summary."""

    steps: int
    train_loss: float
    eval_loss: float | None
    seconds: float
    tokens: int  # the whole run's, over every process
    loss_tokens: int


def _callbacks(cfg: RunConfig, trainer: LorakitTrainer, run: RunFolder, method: Method, stopper: StopOnInterrupt,
               fresh: bool) -> list[TrainerCallback]:
    """What watches the run: metrics.jsonl and its plot, Ctrl-C, the progress bar, early stopping."""
    return [
        MetricsLog(run.metrics_file, trainer.count, fresh=fresh, perplexity=method.perplexity),
        LossPlot(run.metrics_file, run.plot_file),
        stopper,
        *([RichProgress(trainer.count)] if cfg.train.progress_bar else []),
        *([EarlyStoppingCallback(cfg.train.early_stopping_patience)] if cfg.train.early_stopping_patience else []),
    ]


def _summary(cfg: RunConfig, method: Method, trainer: LorakitTrainer, model: PeftModel, trained: Trained,
             template: str, plan: Plan, reports: list[DataReport], reserved_before: int) -> RunSummary:
    """summary.json: the whole run's counts and losses, this session's speeds, the model's size, the plan."""
    # Speeds are this session's: the tokens trained since it started over its time.
    session_tokens = trained.tokens - trainer.before_resume.tokens
    session_loss_tokens = trained.loss_tokens - trainer.before_resume.loss_tokens
    elapsed, eval_loss = trained.seconds, trained.eval_loss
    trainable, total = model.get_nb_trainable_parameters()
    cuda_peak = cuda_peak_bytes()
    return RunSummary(
        base_model=cfg.model.name,
        method=cfg.method,
        template=template,
        precision=plan.precision.value,
        weights_dtype=str(model.get_base_model().dtype).removeprefix("torch."),
        steps=trained.steps,
        train_loss=trained.train_loss,
        eval_loss=eval_loss,
        eval_perplexity=math.exp(eval_loss) if eval_loss is not None and eval_loss < 50 and method.perplexity
        else None,
        best_checkpoint=trainer.state.best_model_checkpoint,
        skipped_steps=trainer.skipped_steps,
        train_seconds=round(elapsed, 2),
        tokens_seen=trained.tokens,
        loss_tokens_seen=trained.loss_tokens,
        tokens_per_second=round(session_tokens / elapsed, 1) if elapsed > 0 else None,
        loss_tokens_per_second=round(session_loss_tokens / elapsed, 1) if elapsed > 0 else None,
        peak_rss_bytes=peak_rss_bytes(),
        cuda_peak_reserved_bytes=cuda_peak,
        cuda_training_reserved_bytes=cuda_peak - reserved_before if cuda_peak is not None else None,
        trainable_parameters=trainable,
        total_parameters=total,
        memory_footprint_bytes=model.get_memory_footprint(),
        data=[r.as_dict() for r in reports],
        compiled_from_step=trainer.compiling.report.compiled_from_step,
        compile_seconds=trainer.compiling.report.compile_seconds,
        compile_note=trainer.compiling.report.reason,
        plan=plan.as_dict(),
    )
