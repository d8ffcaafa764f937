"""The train section of the config: how the optimizer steps, checkpoints are kept, passes run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lorakit.config.section import RESUMABLE, Section

class DistributedConfig(Section):
    strategy: Literal["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = Field(
        "ddp",
        description="How several processes share the work: ddp (a full copy per process; CPU or GPU), "
        "fsdp or deepspeed_zero2/3 (shard optimizer state, gradients and with fsdp/zero3 the weights; GPUs only).",
    )
    timeout_s: int = Field(
        600, gt=0, json_schema_extra=RESUMABLE,
        description="A collective that waits longer (a rank hung or lost) fails the run instead of hanging.",
    )


class TrainConfig(Section):
    epochs: float = Field(
        1.0, gt=0, json_schema_extra=RESUMABLE, description="Passes over the training data (fractions allowed)."
    )
    max_steps: int = Field(
        -1, ge=-1, json_schema_extra=RESUMABLE, description="Stop after this many optimizer steps; -1: run the epochs."
    )
    batch_size: int = Field(8, gt=0, description="Samples per forward pass.")
    grad_accum: int = Field(1, gt=0, description="Forward passes per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate, after warm-up.")
    warmup: float = Field(0.05, ge=0, description="Warm-up: a fraction of all steps if < 1, else steps.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="How the learning rate moves after warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on the trained weights.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the gradient norm to this before each step.")
    logging_steps: int = Field(
        5, gt=0, json_schema_extra=RESUMABLE, description="Log the train loss (metrics.jsonl) every N steps."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Autocast for the forward and backward. 'auto': bf16 on a GPU that has it (else fp16); on a CPU "
        "bf16 where a one-off matmul probe (cached in ~/.cache/lorakit) measured it faster than fp32, else fp32.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations: less memory, ~30% slower.")
    progress_bar: bool = Field(True, json_schema_extra=RESUMABLE, description="Draw a progress bar on the terminal.")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd"] = Field(
        "adamw", description="The 8-bit and paged variants need bitsandbytes."
    )
    save_steps: int | None = Field(
        100, gt=0, json_schema_extra=RESUMABLE,
        description="Checkpoint every N steps (None: never); a killed run resumes from the last one.",
    )
    save_total_limit: int = Field(
        2, gt=0, json_schema_extra=RESUMABLE, description="Checkpoints kept (the best one is kept besides)."
    )
    eval_steps: int | None = Field(
        None, gt=0, json_schema_extra=RESUMABLE,
        description="Eval loss every N steps when there is eval data (None: at each checkpoint).",
    )
    keep_best: bool = Field(True, description="With eval data: the saved adapter is the one with the best eval loss (grpo: the highest eval reward).")
    early_stopping_patience: int | None = Field(
        None, gt=0, json_schema_extra=RESUMABLE,
        description="Stop after this many evaluations without a better eval loss.",
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="A NaN/inf loss or gradient: stop naming the step, or skip that optimizer step."
    )
    report_to: list[Literal["tensorboard", "wandb", "swanlab"]] = Field(
        default_factory=list, json_schema_extra=RESUMABLE,
        description="Experiment trackers, logging inside the run folder; wandb and swanlab run offline "
        "(no login, no network) unless WANDB_MODE / SWANLAB_MODE says otherwise.",
    )
    auto_batch_size: bool = Field(False, description="GPU only: halve batch_size until it fits in memory.")
    selective_loss: bool = Field(
        True, description="Project only answer positions to the vocabulary (same loss, less compute and memory)."
    )
    loss_chunk_size: int = Field(2048, gt=0, description="Answer tokens projected at a time by selective_loss.")
    packing: bool = Field(
        False, description="Concatenate each batch into one unpadded row (attention kept within each sample)."
    )
    micro_batch_tokens: int | None = Field(
        None, ge=0,
        description="Run each batch as forward passes of at most this many token positions, their boundaries "
        "chosen by a cost model (a fixed cost per pass, one per position, attention's square); same gradient, no "
        "padding computed, lower peak memory. 0: never split; None: 1024 on CPU, never on GPU (where wide batches "
        "are cheap). Not with packing (a packed batch is one unpadded row, never split).",
    )
    pass_packing: bool | None = Field(
        None,
        description="Each pass of micro_batch_tokens packs its samples into one row with position ids (no padding; "
        "attention stays within each sample); false: rows padded to the pass's longest. None: packed where the "
        "model reads sample boundaries from position ids (transformers' own architectures).",
    )
    eager_attention_tokens: int | None = Field(
        None, ge=0,
        description="Samples of a packed row (or padded rows) at most this long use eager attention, longer ones "
        "the model's own (sdpa): on a CPU eager's forward and backward are faster for short ones, sdpa's for long "
        "ones. None: on CPU the crossover a probe measures once per machine (hardware/probes.py), 0 on GPU; 0: always sdpa.",
    )
    per_sample_attention: bool | None = Field(
        None,
        description="A packed row's attention computed per sample (each sample's own causal attention) instead of "
        "as the row's square with all but each sample's block masked; the same result. None: on CPU, for the "
        "families with plain causal attention (llama, mistral, qwen2/3, phi3, ...); false: the model's own.",
    )
    fused_lora: bool | None = Field(
        None,
        description="Each plain LoRA linear (dropout 0, no DoRA, unquantized base) as one fused autograd op; the "
        "same products, fewer per-layer operations. None: on CPU, off on GPU (not yet measured there).",
    )
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="Compile each decoder layer with torch.compile (fuses the work between matmuls; needs a C++ "
        "compiler on a CPU). auto: on a CPU, one process, after timing two steps, only if the steps left would "
        "save well over the compile's cost (about a minute); true: from the first step; false: never.",
    )
    group_by_length: bool = Field(
        False, description="Batch samples of similar length together (less padding) when not packing."
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Multi-process training (lorakit train --nproc N, torchrun)."
    )

    @field_validator("max_steps")
    @classmethod
    def _some_steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 steps would train nothing; give a number of steps, or -1 to run train.epochs")
        return value

    @model_validator(mode="after")
    def _packing_or_micro_batches(self) -> TrainConfig:
        if self.packing and self.micro_batch_tokens:
            # A packed batch is one row: there is no padding to save by splitting it into passes.
            raise ValueError(
                f"train.packing and train.micro_batch_tokens ({self.micro_batch_tokens}) do not combine: a packed "
                "batch is one unpadded row that is never split; drop micro_batch_tokens or set packing: false"
            )
        return self

    @model_validator(mode="after")
    def _eval_fits_checkpoints(self) -> TrainConfig:
        if self.keep_best and self.save_steps and self.eval_steps and self.save_steps % self.eval_steps:
            raise ValueError(
                f"save_steps ({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps}) "
                "so the best adapter is in a checkpoint; or set keep_best: false"
            )
        return self

    @model_validator(mode="after")
    def _sharding_fits(self) -> TrainConfig:
        strategy = self.distributed.strategy
        if strategy == "ddp":
            return self
        if self.on_nonfinite == "skip":
            # Each rank sees only its shard of the gradients, so ranks could disagree on skipping.
            raise ValueError(f"train.on_nonfinite=skip is not supported with distributed.strategy={strategy}; use stop")
        if self.selective_loss and strategy in ("fsdp", "deepspeed_zero3"):
            # selective_loss applies the output head outside the model's forward, where
            # fsdp and ZeRO-3 hold only a shard of its weights.
            raise ValueError(
                f"train.selective_loss is not supported with distributed.strategy={strategy}; "
                "set train.selective_loss=false"
            )
        if self.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
            raise ValueError(
                f"train.optimizer={self.optimizer} is not supported with distributed.strategy={strategy}; "
                "use adamw, adafactor or sgd"
            )
        if self.auto_batch_size:
            raise ValueError(f"train.auto_batch_size is not supported with distributed.strategy={strategy}")
        return self
