"""The fine-tuning recipe, top to bottom: setup, train, save.

Read this file to know what ``lorakit train`` does. Each stage gets only its section of
the config; the recipe is the one place that sees all of it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from transformers import set_seed

from lorakit.config import RunConfig, save_config
from lorakit.data.collate import PadCollator
from lorakit.data.dataset import build_splits
from lorakit.data.templates import resolve_template
from lorakit.model.loader import load_model, load_tokenizer, resolve_model_folder
from lorakit.model.lora import apply_lora
from lorakit.train.callbacks import MetricsLog
from lorakit.train.hardware import cuda_peak_bytes, peak_rss_bytes, pick_precision
from lorakit.train.trainer import LorakitTrainer, training_arguments

log = logging.getLogger(__name__)

CONFIG_FILE = "lorakit.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"


def run(cfg: RunConfig) -> dict:
    """Fine-tune as configured; return the run summary (also written to summary.json)."""
    out = cfg.resolved_output_dir()
    out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)

    # --- setup: tokenizer and data first, so bad data fails before the model loads
    source = resolve_model_folder(cfg.model)
    tokenizer = load_tokenizer(source)
    template = resolve_template(tokenizer, cfg.data.template)
    splits = build_splits(cfg.data, tokenizer, template)
    for report in splits.reports:
        for line in report.lines():
            log.info("data %s", line)

    model = apply_lora(load_model(source, cfg.model.dtype), cfg.lora)
    on_gpu = torch.cuda.is_available()
    precision = pick_precision(cfg.train.precision)
    log.info("precision: %s (train.precision=%s) on %s", precision, cfg.train.precision, "cuda" if on_gpu else "cpu")

    trainer = LorakitTrainer(
        model=model,
        args=training_arguments(cfg.train, out, cfg.seed, precision, on_gpu),
        train_dataset=splits.train,
        eval_dataset=splits.eval or None,
        data_collator=PadCollator(tokenizer.pad_token_id),
        callbacks=[MetricsLog(out / METRICS_FILE)],
    )

    # --- train
    started = time.monotonic()
    result = trainer.train()
    elapsed = time.monotonic() - started
    eval_loss = trainer.evaluate()["eval_loss"] if splits.eval else None

    # --- save: the adapter in peft's layout, the tokenizer carrying the template we trained
    # with (so chat and serving render exactly the same text), and the resolved config.
    model.save_pretrained(out)
    tokenizer.chat_template = template.jinja
    tokenizer.save_pretrained(out)
    save_config(cfg, out / CONFIG_FILE)
    trainable, total = model.get_nb_trainable_parameters()
    summary = {
        "base_model": cfg.model.name,
        "template": template.name,
        "precision": precision,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "eval_loss": eval_loss,
        "eval_perplexity": math.exp(eval_loss) if eval_loss is not None and eval_loss < 50 else None,
        "train_seconds": round(elapsed, 2),
        "tokens_seen": trainer.tokens_seen,
        "loss_tokens_seen": trainer.loss_tokens_seen,
        "tokens_per_second": round(trainer.tokens_seen / elapsed, 1) if elapsed > 0 else None,
        "peak_rss_bytes": peak_rss_bytes(),
        "cuda_peak_reserved_bytes": cuda_peak_bytes(),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "data": [r.as_dict() for r in splits.reports],
    }
    if cfg.eval.at_end:  # base against tuned on the validation split: eval.json, eval.md
        from lorakit.eval.run import evaluate_after_training

        summary["eval"] = evaluate_after_training(
            model, tokenizer, template, cfg.data, cfg.generation, cfg.eval, out, cfg.train.progress_bar
        )
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
