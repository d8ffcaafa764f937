"""What a training method is, and the little of the trainer it may use.

A method owns what differs between SFT, DPO, ORPO and the next ones, and nothing else: the
rows it reads, how they are batched and split into forward passes, its loss and the values it
logs. Setup, the loop, checkpoints, resume, several processes and the summary are the one
recipe's (``train/recipe.py``) and the one trainer's (``train/trainer.py``) for every method.

A worked example: "SFT on the chosen answer of each pair", reading pairs and training the
chosen side only, would be this module (plus a line in ``methods/__init__.py``)::

    class ChosenOnly(Method):
        name = "chosen"
        rows = PAIRS   # reads pairs of answers (data/pair_dataset.py)
        item = "pair"  # its loss is a mean over pairs

        def collator(self, pad_token_id, packing):
            return lambda pairs: PadCollator(pad_token_id)([p.chosen for p in pairs])

        def split(self, inputs, budget, packed):
            return split_batch(inputs, budget, packed)

        def item_count(self, batch):
            return batch["input_ids"].shape[0]

        def loss(self, step, model, inputs, num_items):
            sums, counts = step.logps(model, inputs)
            means = sums / counts.clamp(min=1)
            return step_share(-means, num_items), {"nll": -means.detach()}

``num_items`` counts the items of the whole optimizer step (over every process), so each
micro-batch's share adds up to the step's mean: accumulated steps and split passes equal one
large batch. The trainer logs the mean of each returned value over the values seen since the
last log (each key its own count, so a value may be given for some of a batch's items only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch.utils.data import Sampler

from lorakit.config import ConfigError, RunConfig
from lorakit.data.pipeline import Rows

Batch = dict[str, torch.Tensor]
Values = dict[str, torch.Tensor]


class Step(Protocol):
    """What a method's loss may ask of the trainer running it."""

    selective_loss: bool  # the answer positions alone are projected to the vocabulary (model/loss.py)
    loss_chunk_size: int
    state: Any  # the Trainer's TrainerState: ``global_step`` is the optimizer steps taken so far

    def is_world_process_zero(self) -> bool: ...

    def autocast(self) -> AbstractContextManager: ...

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def generating(self) -> AbstractContextManager:
        """The model as sampling between steps should run it (the adapter folded into the weights, or fused)."""
        ...

    def logps(self, model: torch.nn.Module, inputs: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the sum of its answer tokens' log-probs, and how many answer tokens it has."""
        ...

    def average(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over the processes of the run (itself when there is one)."""
        ...


class Method:
    """One training method; subclasses set the class attributes and define ``loss``."""

    name: ClassVar[str]
    # What it reads: a kind of row of the data path (data/pipeline.py): SAMPLES, PAIRS.
    rows: ClassVar[Rows]
    # What its loss is a mean over: None for answer tokens (the Trainer's own count of label
    # tokens), else its own unit ("pair"), counted per batch by ``item_count``.
    item: ClassVar[str | None] = None
    # Each step also scores the batch with the frozen reference (the adapter switched off,
    # or a starting run's adapter frozen).
    reference: ClassVar[bool] = False
    # Its eval loss is a mean token cross-entropy, so exp(loss) is a perplexity worth logging.
    perplexity: ClassVar[bool] = False
    # train.compile=auto was measured to pay off for it (each extra graph, like a reference pass, is unmeasured).
    compiles: ClassVar[bool] = False
    # The evaluation value train.keep_best (and early stopping) follow, and whether higher is better.
    best: ClassVar[tuple[str, bool]] = ("eval_loss", False)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Method:
        """The method with its own settings from the run's config (none by default)."""
        return cls()

    def use_text(self, tokenizer: Any, template: Any) -> None:
        """The run's tokenizer and chat template, for a method that renders or decodes text itself
        (GRPO samples and decodes completions); the default needs neither."""

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """Refuse, with a ConfigError, settings this method cannot train with; checked when the config loads."""

    def collator(self, pad_token_id: int, packing: bool) -> Callable[[Sequence[Any]], Batch]:
        """Turns a list of encoded rows into one batch of tensors."""
        raise NotImplementedError

    def train_rows(self, encoded: list[Any]) -> list[Any]:
        """What the Trainer's data loaders hold, from an encoded split (the training one, the eval one)."""
        return encoded

    def train_sampler(self, size: int, step_rows: int, seed: int) -> Sampler | None:
        """The order the Trainer's loader reads the ``size`` training rows in, ``step_rows`` (over every
        process) an optimizer step; None: the Trainer's own shuffle (GRPO repeats steps: ``RepeatedSteps``)."""
        return None

    def split(self, inputs: Batch, budget: int, packed: bool) -> list[Batch]:
        """The forward passes one batch runs as, each under ``budget`` tokens (``train/microbatch.py``)."""
        raise NotImplementedError

    def item_count(self, batch: Batch) -> int:
        """How many of ``item`` a batch holds (only asked when ``item`` is set)."""
        raise NotImplementedError

    def prepare_step(self, step: Step, model: torch.nn.Module, batches: list[Batch]) -> list[Batch]:
        """The micro-batches of one optimizer step, before any of them is trained on.

        For what a step needs from all of its batches at once, so that accumulation equals one
        large batch: KTO's KL estimate over the step's answers, GRPO's completions and advantages.
        Called on every process with that process's batches; the default changes nothing.
        """
        return batches

    def save_state(self, folder: Path, process: int) -> None:
        """Write into a checkpoint's ``folder`` what the method carries from one step to the next (GRPO's
        completions reused over iterations), one file per ``process``; the default carries nothing."""

    def load_state(self, folder: Path, process: int) -> None:
        """Take back what ``save_state`` wrote, when a run resumes from ``folder``."""

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        """The logged values from the means of what ``loss`` returned since the last log (a
        difference of two means, say); the default logs the means."""
        return means

    def loss(self, step: Step, model: torch.nn.Module, inputs: Batch,
             num_items: torch.Tensor | int | None) -> tuple[torch.Tensor, Values] | None:
        """This batch's share of the step's loss, and per-item values to log; None: the model's own loss.

        ``num_items``: the step's items (``item``), or its answer tokens when ``item`` is None;
        None when the Trainer does not count them (then the batch is its own step).
        """
        raise NotImplementedError


def refuse_rows_of_one_kind(cfg: RunConfig, method: str, formats: tuple[str, ...], unit: str) -> None:
    """The refusals of a method whose batches keep rows together (the answers of a pair): the data shapes it
    reads, and no packing or grouping by length, which would part them."""
    if cfg.data.format not in formats:
        raise ConfigError(f"method: {method} trains on {unit}; data.format={cfg.data.format} is not such a shape: "
                          f"use {' or '.join(formats)}")
    if cfg.train.packing or cfg.train.group_by_length:
        raise ConfigError(f"method: {method} keeps each pair's two answers in one batch: train.packing and "
                          "train.group_by_length do not apply; set them to false")


@contextmanager
def without_dropout(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in eval mode for a while: for scoring in ``prepare_step``, which must not draw random numbers,
    since on resume the Trainer restores its RNG only after the first step's batches are prepared."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def step_share(losses: torch.Tensor, num_items: torch.Tensor | int | None) -> torch.Tensor:
    """Per-item losses summed and divided by the step's items: the batch's share of the step's mean."""
    count = num_items if num_items is not None else losses.shape[0]
    return losses.sum() / torch.as_tensor(count, device=losses.device).clamp(min=1)
