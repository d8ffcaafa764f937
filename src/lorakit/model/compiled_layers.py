"""A model's decoder layers compiled with ``torch.compile`` for training steps, and only for those.

On a CPU with fast bf16 matmuls a LoRA pass spends most of its time outside the matmuls: RMSNorm
and rotary embeddings in float32 with their casts, SiLU and the residual adds, each a separate
kernel with its own dispatch and autograd node, 30 times a pass for SmolLM2. Compiling each
decoder layer fuses that work (inductor writes C++ loops for the CPU), forward and backward.
It costs a compile first (SmolLM2 on 2 cores: 47 s, 21 s once torch's compile cache holds it),
which ``train/auto_compile.py`` weighs against the run's remaining steps.

- Each layer's ``__call__`` is compiled in place (``nn.Module.compile``), so parameters, state
  dicts and peft's saving see the same modules; ``paused`` sets the eager call back for what runs
  between steps (evaluation would otherwise compile again for no-grad and eval mode).
- Shapes are dynamic from the start: each pass has a new length, and a static first compile
  would only be thrown away at the second.
- lorakit's per-sample attention stays out of the graphs (``torch.compiler.disable``, in
  ``model/packed_attention.py``): its loop over a row's samples depends on their lengths, and
  tracing it would compile again for every new pattern of lengths. A layer then compiles as a
  few graphs around its attention call, all in the first compiled step.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import torch

from lorakit.errors import LorakitError
from lorakit.model.loss import causal_lm
from lorakit.transformers_internals import no_split_modules


class CompileError(LorakitError, RuntimeError):
    """The layers cannot be compiled here; the message says what to install or switch off."""


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated decoder layers: the classes transformers keeps whole (``_no_split_modules``)."""
    base = causal_lm(model)
    kept_whole = no_split_modules(base)
    return [m for m in base.modules() if type(m).__name__ in kept_whole]


def compiler_missing(device: str) -> str | None:
    """Why inductor cannot compile for ``device`` here, or None. On a CPU it needs a C++ compiler."""
    if device == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile on a CPU needs a C++ compiler (g++ or clang++) on PATH"
    return None


class CompiledLayers:
    """Compile a model's decoder layers in place; pause or remove the compiled calls."""

    def __init__(self, model: torch.nn.Module):
        self.layers = decoder_layers(model)
        self._calls: list = []

    @property
    def active(self) -> bool:
        return bool(self._calls)

    def compile(self, device: str, fall_back: bool = False) -> None:
        """Compile on the next call. ``fall_back``: where compiling fails, run eager rather than stop
        (train.compile auto: a run that would have trained eager must not fail for a compile)."""
        if not self.layers:
            raise CompileError("train.compile: this model has no decoder layers lorakit can find "
                               "(_no_split_modules is empty); set train.compile=false")
        missing = compiler_missing(device)
        if missing:
            raise CompileError(f"train.compile: {missing}; install one or set train.compile=false")
        if fall_back:
            torch._dynamo.config.suppress_errors = True  # dynamo's own switch: a failed frame runs eager
        for layer in self.layers:
            layer.compile(dynamic=True)
        self._calls = [layer._compiled_call_impl for layer in self.layers]

    @contextmanager
    def paused(self):
        """The layers' eager calls within this block (evaluation, generation between steps)."""
        for layer in self.layers:
            layer._compiled_call_impl = None
        try:
            yield
        finally:
            for layer, call in zip(self.layers, self._calls):
                layer._compiled_call_impl = call

    def remove(self) -> None:
        """Back to eager for good (after training: saving, evaluation and chat see the model as loaded)."""
        for layer in self.layers:
            layer._compiled_call_impl = None
        self._calls = []
