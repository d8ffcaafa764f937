"""The private names of transformers that lorakit relies on, named here and nowhere else in src/.

``transformers>=5,<6`` promises its public API only: a minor release may rename, drop or
re-sign a private method or attribute, and then resume totals go wrong in silence or a run
fails at its first checkpoint. So each private name lorakit uses is in ``NAMES`` with why it
is needed, read through a function here (an override keeps its name, as Python requires), and
checked against the installed transformers: the classes when a trainer is built
(``check_installed``, about 0.1 ms), the training loop's state once the loop has set it up
(``LoopStateCheck``, before the first step). A mismatch is a one-line error naming the name
and the transformers version. tests/test_transformers_internals.py also checks that no other
module in src/ names one.

A reliance of the same kind that is not a name: the optimizer ``Trainer.create_optimizer``
returns is the one whose ``step`` the loop runs (accelerate's wrapper calls it), so a ``step``
set on that instance guards every update (``LorakitTrainer.create_optimizer``;
tests/train/test_steps.py checks that a non-finite step is skipped).
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import TrainerCallback

from lorakit.errors import LorakitError


class TransformersChangedError(LorakitError, RuntimeError):
    """The installed transformers lacks, or has changed, a private name lorakit relies on."""


@dataclass(frozen=True)
class Private:
    """One private name: its class in transformers, what kind it is, and why lorakit needs it."""

    owner: str  # "Trainer", "PreTrainedModel" or "PretrainedConfig"
    name: str
    kind: str  # see _KINDS
    why: str
    params: tuple[str, ...] = ()  # a method's parameters, in order
    holds: type | None = None  # what a loop-state attribute holds


_KINDS = {
    "override": "lorakit overrides it",  # the Trainer calls lorakit's method with exactly ``params``
    "called": "lorakit calls it",  # with the leading ``params``; any others must have defaults
    "loop state": "lorakit reads it",  # set on the trainer by Trainer.train before the first step
    "classmethod": "lorakit calls it",
    "attribute": "lorakit reads it",  # a class attribute or property, read with a default
}

NAMES = (
    Private("Trainer", "_save_checkpoint", "override",
            "to mark a checkpoint complete only once every rank has written it, then rotate the old ones",
            ("self", "model", "trial")),
    Private("Trainer", "_save", "override",
            "to remove the frozen DPO reference adapter that peft saves beside the trained one",
            ("self", "output_dir", "state_dict")),
    Private("Trainer", "_get_num_items_in_batch", "override",
            "so that a preference loss divides by the step's pairs rather than its tokens",
            ("self", "batch_samples", "device")),
    Private("Trainer", "_get_train_sampler", "override",
            "so that a method may order the training rows itself (GRPO repeats a step's prompts for its iterations)",
            ("self", "train_dataset")),
    Private("Trainer", "_get_output_dir", "called",
            "to find the folder the Trainer saves a checkpoint into, to mark and rotate it", ("self", "trial")),
    Private("Trainer", "_prepare_inputs", "called",
            "to move an eval batch to the device as the Trainer's own prediction_step does", ("self", "inputs")),
    Private("Trainer", "_tr_loss", "loop state",
            "for the step losses summed since the last log, part of the run's loss total", holds=torch.Tensor),
    Private("Trainer", "_total_loss_scalar", "loop state",
            "for the step losses logged so far, part of the run's loss total", holds=float),
    Private("Trainer", "_initial_global_step", "loop state",
            "for the step a resumed train() started at, to average over the steps it ran", holds=int),
    Private("PreTrainedModel", "_no_split_modules", "attribute",
            "to find the decoder layers it compiles one by one"),
    Private("PreTrainedModel", "_supports_attention_backend", "attribute",
            "to know that the masks keep packed samples apart by their position ids"),
    Private("PreTrainedModel", "_can_set_attn_implementation", "classmethod",
            "to know whether the attention can be switched between passes", ("cls",)),
    Private("PretrainedConfig", "_attn_implementation", "attribute",
            "to know which attention the model runs now"),
)


_MISSING = object()


def _failure(entry: Private, problem: str) -> TransformersChangedError:
    version = transformers.__version__
    return TransformersChangedError(
        f"transformers {version}: {entry.owner}.{entry.name} {problem}; {_KINDS[entry.kind]} {entry.why}. "
        f"Install a transformers release that has it (pip install 'transformers<{version}') or a lorakit "
        "that supports this one"
    )


def _method_problem(entry: Private, found: object) -> str | None:
    function = found.__func__ if isinstance(found, classmethod) else found
    if entry.kind == "classmethod" and not isinstance(found, classmethod):
        return "is no longer a classmethod"
    if not inspect.isfunction(function):
        return f"is no longer a method (it is a {type(found).__name__})"
    params = list(inspect.signature(function).parameters.values())
    names = tuple(p.name for p in params)
    extra_required = [p.name for p in params[len(entry.params):] if p.default is inspect.Parameter.empty
                      and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    exact = entry.kind == "override"
    if names[: len(entry.params)] != entry.params or (exact and len(names) != len(entry.params)) or extra_required:
        return f"now takes ({', '.join(names)}), not ({', '.join(entry.params)})"
    return None


def check_installed() -> None:
    """Raise TransformersChangedError where the installed transformers differs from ``NAMES``."""
    owners = {"Trainer": transformers.Trainer, "PreTrainedModel": transformers.PreTrainedModel,
              "PretrainedConfig": transformers.PretrainedConfig}
    for entry in NAMES:
        if entry.kind == "loop state":
            continue  # instance attributes: LoopStateCheck looks once train() has set them
        found = inspect.getattr_static(owners[entry.owner], entry.name, _MISSING)
        if found is _MISSING:
            problem = "is gone"
        elif entry.kind == "attribute":
            problem = "is now a method" if callable(found) else None
        else:
            problem = _method_problem(entry, found)
        if problem:
            raise _failure(entry, problem)


def check_loop_state(trainer: transformers.Trainer) -> None:
    """Raise TransformersChangedError unless the training loop has set each loop-state name, of its type."""
    for entry in NAMES:
        if entry.kind != "loop state":
            continue
        value = getattr(trainer, entry.name, _MISSING)
        if value is _MISSING:
            raise _failure(entry, "is not set by Trainer.train")
        if not isinstance(value, entry.holds):
            raise _failure(entry, f"holds a {type(value).__name__}, not a {entry.holds.__name__}")


class LoopStateCheck(TrainerCallback):
    """Runs ``check_loop_state`` as training begins: a changed name stops the run before its first step."""

    def __init__(self, trainer: transformers.Trainer):
        self.trainer = weakref.ref(trainer)  # the trainer holds its callbacks: no reference cycle

    def on_train_begin(self, args, state, control, **kwargs):
        check_loop_state(self.trainer())


# --- the trainer's loop state and helpers
def pending_loss(trainer: transformers.Trainer) -> torch.Tensor:
    """The step losses summed on the device since the last log (this rank's)."""
    return trainer._tr_loss


def logged_loss(trainer: transformers.Trainer) -> float:
    """The step losses logged so far in this train() call (mean over ranks); after train() returns, all of them."""
    return trainer._total_loss_scalar


def initial_global_step(trainer: transformers.Trainer) -> int:
    """The step this train() call started at: 0, or the checkpoint's step on a resume."""
    return trainer._initial_global_step


def output_dir(trainer: transformers.Trainer, trial) -> Path:
    """The folder the Trainer saves this run's checkpoints into."""
    return Path(trainer._get_output_dir(trial=trial))


def prepare_inputs(trainer: transformers.Trainer, inputs: dict) -> dict:
    """A batch on the trainer's device, as the Trainer prepares its own."""
    return trainer._prepare_inputs(inputs)


# --- the model's
def no_split_modules(model: torch.nn.Module) -> set[str]:
    """The class names transformers keeps whole when it splits a model: its decoder layers."""
    return set(getattr(model, "_no_split_modules", None) or [])


def supports_attention_backend(model: torch.nn.Module) -> bool:
    """Whether the model builds its masks with transformers' ``masking_utils`` (a model with its own code may not)."""
    return bool(getattr(model, "_supports_attention_backend", False))


def can_set_attention(model: torch.nn.Module) -> bool:
    """Whether the model's class lets its attention implementation change after loading."""
    check = getattr(type(model), "_can_set_attn_implementation", None)
    return bool(check and check())


def attention_implementation(config) -> str | None:
    """The attention the model runs now (``sdpa``, ``eager``, ...), None for a config without one."""
    return getattr(config, "_attn_implementation", None)
