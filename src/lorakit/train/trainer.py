"""The transformers Trainer, told how lorakit's runs are set up.

We keep the Trainer's loop (accumulation with token-weighted loss, schedulers, mixed
precision, accelerate for multi-process) and only add what it does not count: tokens that
were trained on and tokens that carried loss.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer, TrainingArguments

from lorakit.config import TrainConfig


class LorakitTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_seen = 0
        self.loss_tokens_seen = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.tokens_seen += int(inputs["attention_mask"].sum())
            self.loss_tokens_seen += int((inputs["labels"] != -100).sum())
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


def training_arguments(cfg: TrainConfig, output_dir: Path, seed: int, precision: str, on_gpu: bool) -> TrainingArguments:
    """Map lorakit's train section onto TrainingArguments; nothing else reaches the Trainer."""
    return TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup,
        lr_scheduler_type=cfg.scheduler,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not on_gpu,
        activation_checkpointing=cfg.gradient_checkpointing,
        disable_tqdm=not cfg.progress_bar,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
