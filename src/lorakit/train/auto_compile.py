"""When a run compiles its decoder layers (``train.compile``), and what the compile cost.

Compiling pays back its cost only over enough steps. ``auto`` runs the first ``MEASURE_STEPS``
steps of a session eager, times the last of them (the first pays one-off page faults and
probes), and compiles if the steps left would save well over the compile's cost::

    step 2.5 s, 1,000 steps left:  0.10 x 2.5 s x 1,000 = 250 s saved  >  2 x 60 s  -> compile
    step 2.5 s,   100 steps left:  0.10 x 2.5 s x   100 =  25 s saved  <  2 x 60 s  -> stay eager

``GAIN`` and ``COMPILE_SECONDS`` stand for measurements, rounded against compiling
(bench/compile_bench.py, docs/speed.md "Compiling"). On an AMD EPYC with two threads a compiled
SmolLM2 step was 12% to 19% faster in bf16, after a compile of 47 s, or 21 s with torch's compile
cache from an earlier run. The margin of 2 keeps a slower compile or a smaller gain from costing
the run time.

``auto`` compiles only where that was measured: one process on a CPU, LoRA over unquantized
weights, no activation checkpointing. ``true`` compiles wherever asked, from the run's first step.

The decision is made once per run and written into each checkpoint's marker: a resumed run
computes each step as the uninterrupted run did (compiled code rounds differently from eager).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field

from transformers import TrainerCallback

from lorakit.model.compiled_layers import CompiledLayers

log = logging.getLogger(__name__)

MEASURE_STEPS = 2
GAIN = 0.10
COMPILE_SECONDS = 60.0
MARGIN = 2.0
MARKER_KEY = "compiled_from_step"
NO_LAYERS = "a model whose decoder layers lorakit cannot find"


def compile_pays(step_seconds: float, steps_left: int, gain: float = GAIN,
                 compile_seconds: float = COMPILE_SECONDS, margin: float = MARGIN) -> bool:
    """Whether ``steps_left`` steps of ``step_seconds`` would save ``margin`` times the compile's cost."""
    return gain * step_seconds * steps_left > margin * compile_seconds


@dataclass
class CompileReport:
    """What the run's summary says about compiling."""

    compiled_from_step: int | None = None  # steps after this global step ran compiled; None: none did
    compile_seconds: float | None = None  # the first compiled step's time beyond the median compiled step's
    reason: str = ""
    step_seconds: list[float] = field(default_factory=list, repr=False)  # each compiled step's, this session


class LayerCompiling(TrainerCallback):
    """Compiles the layers when the run starts (``true``) or after measuring steps (``auto``).

    ``blocker``: why ``auto`` does not apply here (a GPU, several processes, ...), or None.
    """

    def __init__(self, layers: CompiledLayers, setting: bool | str, device: str, blocker: str | None = None):
        self.layers = layers
        self.setting = setting
        self.device = device
        self.report = CompileReport()
        self.decided = False
        self._session_steps = 0
        self._started = 0.0
        if blocker is None and not layers.layers:
            blocker = NO_LAYERS
        if setting is False or (setting == "auto" and blocker is not None):
            self.decided = True
            self.report.reason = "train.compile is false" if setting is False else f"auto: off for {blocker}"

    # --- the decision, carried by checkpoints
    def marker_entry(self) -> dict:
        """What a checkpoint's marker records: the decision, once made."""
        return {MARKER_KEY: self.report.compiled_from_step} if self.decided else {}

    def resume(self, marker: dict) -> None:
        """Follow the decision the resumed run made before this checkpoint (if it made one)."""
        if MARKER_KEY in marker and self.setting is not False:
            self.decided = True
            self.report.compiled_from_step = marker[MARKER_KEY]
            self.report.reason = "the resumed run's decision"

    def _compile(self, step: int, why: str) -> None:
        self.layers.compile(self.device, fall_back=self.setting == "auto")
        self.decided = True
        self.report.compiled_from_step = step
        self.report.reason = why
        log.info("compiling %d decoder layers (%s); the next step includes the compile", len(self.layers.layers), why)

    # --- callback hooks
    def on_train_begin(self, args, state, control, **kwargs):
        if self.setting is True and not self.decided:
            self._compile(state.global_step, "train.compile is true")
        elif self.decided and self.report.compiled_from_step is not None and not self.layers.active:
            self._compile(self.report.compiled_from_step, self.report.reason)

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        took = time.monotonic() - self._started
        self._session_steps += 1
        if self.layers.active:
            self.report.step_seconds.append(took)
        elif not self.decided and self._session_steps == MEASURE_STEPS:
            steps_left = state.max_steps - state.global_step
            if compile_pays(took, steps_left):
                self._compile(state.global_step, f"auto: a step took {took:.2f} s with {steps_left} steps left")
            else:
                self.decided = True
                steps = f"{steps_left} more step{'' if steps_left == 1 else 's'}"
                self.report.reason = (f"auto: {steps} of {took:.2f} s would save less than "
                                      f"{MARGIN:g}x a compile of about {COMPILE_SECONDS:.0f} s")
                log.info("not compiling the decoder layers (%s)", self.report.reason)

    def on_train_end(self, args, state, control, **kwargs):
        if len(self.report.step_seconds) >= 2:
            first, rest = self.report.step_seconds[0], self.report.step_seconds[1:]
            self.report.compile_seconds = round(max(0.0, first - statistics.median(rest)), 1)
            log.info("compiled steps: the first took %.1f s, the median of the others %.2f s",
                     first, statistics.median(rest))
