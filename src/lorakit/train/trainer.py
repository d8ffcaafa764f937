"""The transformers Trainer, told how lorakit's runs are set up.

We keep the Trainer's loop (accumulation with token-weighted loss, schedulers, mixed
precision, accelerate for multi-process, resume with RNG and data-order restore) and add
only what it lacks: token counts, a guard against non-finite losses and gradients, and
checkpoints that are complete or ignored. What differs by training method (its batches,
passes and loss) is asked of the method (``train/methods``).
"""

from __future__ import annotations

import itertools
import logging
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from transformers import Trainer, TrainingArguments
from transformers.trainer_pt_utils import nested_gather

from lorakit.config import TrainConfig
from lorakit.errors import LorakitError
from lorakit.labels import loss_positions
from lorakit.model import folded_lora, fused_lora
from lorakit.model.compiled_layers import CompiledLayers
from lorakit.model.loss import selective_loss_supported, sequence_logps
from lorakit.outputs import writing
from lorakit.run import RunFolder
from lorakit.train import checkpoints, distributed
from lorakit.train.auto_compile import LayerCompiling
from lorakit.train.methods.base import Batch, Method, Values
from lorakit.train.passes import PassRunner
from lorakit.train.preference import REFERENCE
from lorakit.transformers_internals import (
    LoopStateCheck, check_installed, initial_global_step, logged_loss, pending_loss, prepare_inputs,
)
from lorakit.transformers_internals import output_dir as checkpoints_root  # _save has an output_dir argument

log = logging.getLogger(__name__)

_OPTIMIZERS = {
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
}


class NonFiniteError(LorakitError, RuntimeError):
    """Training produced NaN or inf; the message names the step."""


@dataclass
class TokenCount:
    tokens: int = 0
    loss_tokens: int = 0


@dataclass
class RunTotals:
    """What a checkpoint carries of the run so far, so a resumed run's summary covers every step."""

    tokens: int = 0
    loss_tokens: int = 0
    loss_sum: float = 0.0  # the sum of the per-step train losses (mean over ranks), as the Trainer adds them


class LorakitTrainer(Trainer):
    def create_accelerator_and_postprocess(self) -> None:
        # fsdp on CPU: accelerate would fall back to DDP without saying so (distributed.fsdp_on_cpu).
        with distributed.fsdp_on_cpu(bool(self.args.fsdp) and not torch.cuda.is_available()):
            super().create_accelerator_and_postprocess()

    def __init__(
        self,
        *args,
        method: Method,
        on_nonfinite: str = "stop",
        keep_checkpoints: int = 2,
        selective_loss: bool = True,
        loss_chunk_size: int = 2048,
        micro_batch_tokens: int = 0,
        pass_packing: bool | None = None,
        eager_attention_tokens: int = 0,
        per_sample_attention: bool = False,
        fused_lora: bool = False,
        compile_layers: bool | str = False,
        compile_blocker: str | None = None,
        **kwargs,
    ):
        # A transformers release that changed a private name we use fails here, not at the first checkpoint.
        check_installed()
        super().__init__(*args, **kwargs)
        self.add_callback(LoopStateCheck(self))
        self.method = method
        if method.item is not None:
            self.loss_is_scaled_for_ga = True  # every loss divides by the whole step's items
        self._sums: dict[str, dict[str, tuple]] = {"train": {}, "eval": {}}  # split -> key -> (sum, count)
        self.count = TokenCount()
        self.selective_loss = selective_loss and selective_loss_supported(self.model)
        self.loss_chunk_size = loss_chunk_size
        self.micro_batch_tokens = micro_batch_tokens
        self.passes = PassRunner(self.accelerator.unwrap_model(self.model), pass_packing, eager_attention_tokens,
                                 autocast=self.args.bf16 or self.args.fp16,
                                 per_sample_attention=per_sample_attention, fuse_lora=fused_lora)
        self._folding: bool | None = None  # how sampling last ran the LoRA layers (generating)
        # train.compile: the decoder layers compiled from the first step (true), or after two
        # timed steps where the rest of the run would repay it (auto; train/auto_compile.py).
        self.compiling = LayerCompiling(CompiledLayers(self.accelerator.unwrap_model(self.model)), compile_layers,
                                        self.args.device.type, compile_blocker)
        self.add_callback(self.compiling)
        self.on_nonfinite = on_nonfinite
        self.keep_checkpoints = keep_checkpoints
        self.skipped_steps: list[int] = []
        self._poisoned = False
        self.before_resume = RunTotals()  # what the checkpoint we resumed from had counted
        self._steps_before_unknown = False  # resumed from a checkpoint written without totals

    # --- the whole run's totals, across resumes
    def resume_totals(self, checkpoint: Path) -> None:
        """Start counting from the checkpoint's totals (rank 0 holds them: the others count from 0)."""
        saved = checkpoints.read_marker(checkpoint)
        self.compiling.resume(saved)
        self.method.load_state(checkpoint, self.args.process_index)
        if "loss_sum" not in saved:
            self._steps_before_unknown = True
            log.warning("%s predates run totals: summary.json counts only the steps after it", checkpoint)
            return
        self.before_resume = RunTotals(saved["tokens"], saved["loss_tokens"], saved["loss_sum"])
        if self.is_world_process_zero():
            self.count.tokens, self.count.loss_tokens = self.before_resume.tokens, self.before_resume.loss_tokens

    def _loss_sum(self) -> float:
        """The run's summed step losses so far: logged ones, the not yet logged ones, and those before a resume."""
        pending = nested_gather(pending_loss(self), self.args.parallel_mode).mean().item()
        return self.before_resume.loss_sum + logged_loss(self) + pending

    def whole_run_train_loss(self) -> float:
        """Mean train loss over every step of the run, the steps before a resume included."""
        # After train() the Trainer has added its last unlogged losses to the logged ones.
        steps = self.state.global_step - (initial_global_step(self) if self._steps_before_unknown else 0)
        return (self.before_resume.loss_sum + logged_loss(self)) / max(steps, 1)

    # --- counting and guarding each step
    def count_tokens(self, inputs: dict[str, torch.Tensor]) -> None:
        mask = inputs.get("attention_mask")
        self.count.tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        self.count.loss_tokens += int(loss_positions(inputs["labels"]).sum())

    def split_passes(self, inputs: Batch) -> list[Batch]:
        """The forward passes one batch runs as (packed rows, or padded ones: see microbatch), as the method splits."""
        return self.method.split(inputs, self.micro_batch_tokens, self.passes.packed)

    # --- what a method's loss may use (methods/base.Step)
    def autocast(self):
        return self.accelerator.autocast()

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)

    def generating(self):
        """Sampling runs each plain LoRA layer with the adapter folded into a copy of its weight
        (model/folded_lora.py: one matmul a layer; a fifth of a GRPO step's generation on a CPU) when the
        copies fit in a quarter of the free memory, and else as training's passes do, fused where they are."""
        layers = [m for m in self.accelerator.unwrap_model(self.model).modules() if fused_lora.fusable(m)]
        fold = bool(layers) and folded_lora.fold_fits(layers, layers[0].get_base_layer().weight.device)
        if fold != self._folding:
            log.info("sampling with the adapter %s", "folded into a copy of the weights" if fold else
                     "as separate layers (its folded copy would not fit in a quarter of the free memory)")
            self._folding = fold
        return folded_lora.folded(layers) if fold else fused_lora.fused(self.passes.fused)

    def logps(self, model: torch.nn.Module, inputs: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logps(model, inputs, self.loss_chunk_size, self.selective_loss, self.accelerator.autocast())

    def average(self, value: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(value, "mean")

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        step_rows = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        own = self.method.train_sampler(len(dataset), step_rows, self.args.data_seed)
        return own if own is not None else super()._get_train_sampler(train_dataset)

    # --- one optimizer step's batches, prepared together (methods/base.Method.prepare_step)
    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        batches = list(itertools.islice(epoch_iterator, num_batches))
        if batches:
            # The model's own attention, whatever the last pass switched to: what a method computes here
            # (GRPO's sampling, KTO's KL rows) is then the same in a run resumed before this step.
            self.passes.restore()
            # Eager layers too (train.compile): sampling's no-grad, one-token passes would compile
            # graphs of their own, as evaluation would (``evaluate`` pauses them the same way).
            with self.compiling.layers.paused():
                batches = self.method.prepare_step(self, self.model_wrapped, batches)
        # The Trainer's own collects the prepared batches and counts their items (the override below).
        return super().get_batch_samples(iter(batches), len(batches), device)

    # --- the loss: the method's
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """The method's items in the optimizer step (over all ranks), the divisor of every micro-batch's loss."""
        if self.method.item is None:  # answer tokens, as the Trainer counts them
            return super()._get_num_items_in_batch(batch_samples, device)
        if not batch_samples:
            return None
        items = torch.tensor(sum(self.method.item_count(b) for b in batch_samples), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            items = self.accelerator.gather(items).sum()
        return items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.count_tokens(inputs)
        found = self.method.loss(self, model, inputs, num_items_in_batch)
        if found is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        loss, values = found
        if values:
            self._remember("train" if model.training else "eval", values)
        if model.training and self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every rank's items and DDP averages gradients over
            # ranks; scale back as the Trainer does for a model's own loss.
            loss = loss * self.accelerator.num_processes
        return (loss, {}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self.method.item is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = prepare_inputs(self, inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _remember(self, split: str, values: Values) -> None:
        """Add each value's sum and count: a key may cover some of a batch's items only (KTO's per-label means)."""
        sums = self._sums[split]
        for key, value in values.items():
            value = value.detach().float().reshape(-1)
            total, count = sums.get(key, (0, 0))
            sums[key] = (total + value.sum(), count + value.numel())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the means of the method's values over the items seen since the last log (rewards, margins)."""
        prefix = next((k[: -len("loss")] for k in logs if k.endswith("eval_loss")), None)
        split = "eval" if prefix is not None else "train" if "loss" in logs else None
        if split is not None and self._sums[split]:
            sums = self._sums[split]
            keys = sorted(sums)
            pairs = [torch.stack([torch.as_tensor(sums[k][0]), torch.as_tensor(float(sums[k][1]))]) for k in keys]
            totals = self.accelerator.reduce(torch.stack(pairs).float().to(self.args.device), "sum").tolist()
            means = {key: total / count for key, (total, count) in zip(keys, totals) if count}
            logs.update({f"{prefix or ''}{key}": value for key, value in self.method.summarize(means).items()})
            self._sums[split] = {}
        super().log(logs, start_time)

    def training_step(self, model, inputs, num_items_in_batch=None):
        passes = [inputs]
        # Each pass divides by the whole step's token count, so passes add up exactly; without
        # that count (a model that takes no loss kwargs) a pass would average on its own.
        # DeepSpeed steps its optimizer inside every backward, so it gets the batch whole.
        if (self.micro_batch_tokens and num_items_in_batch is not None
                and self.accelerator.distributed_type != DistributedType.DEEPSPEED):
            passes = self.split_passes(inputs)
        loss = None
        for k, part in enumerate(passes):
            # Gradients of all passes are summed locally and reduced across ranks once, after the last.
            with self.accelerator.no_sync(model) if k < len(passes) - 1 else nullcontext(), self.passes.run(part):
                part_loss = super().training_step(model, part, num_items_in_batch)
            loss = part_loss if loss is None else loss + part_loss
        if not torch.isfinite(loss).all():
            self._nonfinite(f"the loss is {loss.item()}")
        return loss

    def evaluate(self, *args, **kwargs):
        # Evaluation runs the layers eager: compiled ones would compile again for no-grad and eval mode.
        with self.compiling.layers.paused():
            return super().evaluate(*args, **kwargs)

    def restore_model(self) -> None:
        """The model as it was loaded (its own attention, eager layers), for evaluation, generation, saving."""
        self.passes.restore()
        self.compiling.layers.remove()

    def _nonfinite(self, what: str) -> None:
        step = self.state.global_step + 1
        if self.on_nonfinite == "stop":
            raise NonFiniteError(
                f"step {step}: {what}. Training stopped so no bad update is kept. Lower the learning rate, "
                "check the data of this step, or set train.on_nonfinite=skip to skip such steps."
            )
        self._poisoned = True

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        step = optimizer.step

        def guarded_step(*args, **kwargs):
            # Gradients can be inf with a finite loss (an overflow in backward): check them too.
            if not self._poisoned:
                for group in optimizer.param_groups:
                    if any(p.grad is not None and not torch.isfinite(p.grad).all() for p in group["params"]):
                        self._nonfinite("a gradient is NaN or inf")
                        break
            if self._poisoned:
                self.skipped_steps.append(self.state.global_step + 1)
                log.warning("step %d: non-finite loss or gradient, update skipped", self.state.global_step + 1)
                optimizer.zero_grad(set_to_none=True)
                self._poisoned = False
                return None
            return step(*args, **kwargs)

        optimizer.step = guarded_step
        return optimizer

    # --- checkpoints: complete or ignored
    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        # peft saves every adapter; a frozen reference is the starting run's, already on disk there.
        shutil.rmtree(Path(output_dir or self.args.output_dir) / REFERENCE, ignore_errors=True)

    def _save_checkpoint(self, model, trial):
        run_dir = checkpoints_root(self, trial)
        folder = checkpoints.step_folder(run_dir, self.state.global_step)
        if self.args.should_save:
            # A run resumed from an older checkpoint writes this step's folder again (over a newer
            # one it fell back from): its old marker must not vouch for the files while they change.
            (folder / checkpoints.MARKER).unlink(missing_ok=True)
        # A save that fails (a full disk) deletes the folder it started: no half checkpoint is left.
        with writing(f"checkpoint {self.state.global_step}", folder, undo=None if folder.exists() else folder):
            super()._save_checkpoint(model, trial)
            self.method.save_state(folder, self.args.process_index)
            # Every rank writes its own RNG state into the folder; mark it complete only after all have.
            self.accelerator.wait_for_everyone()
            # Collectives, so every rank takes part; only rank 0 writes them down.
            tokens, loss_tokens = distributed.sum_over_ranks(self.count.tokens, self.count.loss_tokens)
            loss_sum = self._loss_sum()
            if not self.args.should_save:
                return
            checkpoints.mark_complete(folder, self.state.global_step,
                                      {"tokens": tokens, "loss_tokens": loss_tokens, "loss_sum": loss_sum,
                                       **self.compiling.marker_entry()})
        best = Path(self.state.best_model_checkpoint) if self.state.best_model_checkpoint else None
        checkpoints.rotate(run_dir, self.keep_checkpoints, protect=best)


def training_arguments(
    cfg: TrainConfig, output_dir: Path, seed: int, precision: str, on_gpu: bool, has_eval: bool, quantized: bool = False,
    best: tuple[str, bool] = Method.best,
) -> TrainingArguments:
    """Map lorakit's train section onto TrainingArguments; nothing else reaches the Trainer.

    ``quantized``: the base is 4/8-bit (QLoRA), which changes how fsdp and ZeRO-3 load and shard it.
    ``best``: the method's evaluation value that keep_best and early stopping follow, and whether higher is better.
    """
    save = cfg.save_steps is not None
    eval_every = cfg.eval_steps or cfg.save_steps
    evaluate = has_eval and eval_every is not None
    keep_best = has_eval and save and cfg.keep_best and evaluate
    return TrainingArguments(
        output_dir=str(RunFolder(output_dir).checkpoints),
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
        optim=_OPTIMIZERS[cfg.optimizer],
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if save else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=None,  # we rotate ourselves, after a new checkpoint is complete
        eval_strategy="steps" if evaluate else "no",
        eval_steps=eval_every,
        load_best_model_at_end=keep_best,
        # Early stopping follows the method's value too, with keep_best or without (GRPO: the reward, not the loss).
        metric_for_best_model=best[0] if keep_best or cfg.early_stopping_patience else None,
        greater_is_better=best[1] if keep_best or cfg.early_stopping_patience else None,
        report_to="none",  # trackers are attached by lorakit.train.tracking, with our folders and modes
        seed=seed,
        data_seed=seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not on_gpu,
        activation_checkpointing=cfg.gradient_checkpointing and cfg.distributed.strategy != "fsdp",
        auto_find_batch_size=cfg.auto_batch_size and on_gpu,
        train_sampling_strategy="group_by_length" if cfg.group_by_length and not cfg.packing else "random",
        disable_tqdm=True,  # lorakit draws its own progress bar
        dataloader_num_workers=0,
        remove_unused_columns=False,
        **distributed.trainer_options(cfg.distributed, on_gpu, cfg.gradient_checkpointing, quantized=quantized),
    )
