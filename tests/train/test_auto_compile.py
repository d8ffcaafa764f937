"""train.compile: when the layers are compiled, that a compiled run trains as an eager one, and
that the decision survives a resume.

The decision is a pure rule over a measured step time (train/auto_compile.py); the run-level
tests compile a tiny model for real (inductor runs the C++ compiler: marked slow).
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from lorakit.model.compiled_layers import compiler_missing
from lorakit.train import auto_compile, checkpoints, recipe
from lorakit.train.plan import compile_blocker
from lorakit.train.auto_compile import LayerCompiling, compile_pays

from tests.train.helpers import ROWS, adapter, metrics, tiny_config
from tests.tolerance import assert_close_at_scale


def test_compile_pays_only_when_the_steps_left_repay_it_twice():
    # The docstring's worked example: 0.10 x 2.5 s x 1,000 = 250 s > 2 x 60 s; x 100 = 25 s is not.
    assert compile_pays(2.5, 1000) and not compile_pays(2.5, 100)
    # Break-even: 0.10 x 1 s x n = 120 s at n = 1,200.
    assert not compile_pays(1.0, 1200) and compile_pays(1.0, 1201)


class FakeLayers:
    def __init__(self):
        self.layers, self.active, self.compiled_for, self.fall_back = ["layer"] * 3, False, None, None

    def compile(self, device, fall_back=False):
        self.active, self.compiled_for, self.fall_back = True, device, fall_back


class State:
    def __init__(self, max_steps):
        self.global_step, self.max_steps = 0, max_steps


def _steps(callback, state, seconds, clock):
    """Run ``len(seconds)`` steps through the callback's hooks, each taking its seconds on ``clock``."""
    for took in seconds:
        callback.on_step_begin(None, state, None)
        clock[0] += took
        state.global_step += 1
        callback.on_step_end(None, state, None)


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(auto_compile.time, "monotonic", lambda: now[0])
    return now


def test_auto_times_the_second_step_and_compiles_where_the_rest_repays_it(clock):
    layers, state = FakeLayers(), State(max_steps=1002)
    callback = LayerCompiling(layers, "auto", "cpu")
    callback.on_train_begin(None, state, None)
    assert not layers.active and callback.marker_entry() == {}  # nothing decided before measuring
    _steps(callback, state, [9.0, 2.5], clock)  # the first step's 9 s (warm-up) is not what is weighed
    assert layers.compiled_for == "cpu" and callback.report.compiled_from_step == 2
    assert layers.fall_back  # auto: a compile that fails runs eager instead of ending the run
    assert callback.marker_entry() == {"compiled_from_step": 2}
    _steps(callback, state, [62.0, 2.2, 2.3, 2.1], clock)  # the first compiled step carries the compile
    callback.on_train_end(None, state, None)
    assert callback.report.compile_seconds == pytest.approx(62.0 - 2.2)


def test_auto_stays_eager_where_the_run_is_too_short_and_says_why(clock):
    layers, state = FakeLayers(), State(max_steps=102)
    callback = LayerCompiling(layers, "auto", "cpu")
    callback.on_train_begin(None, state, None)
    _steps(callback, state, [3.0, 2.5, 2.5], clock)
    assert not layers.active and callback.report.compiled_from_step is None
    assert "100 more steps of 2.50 s" in callback.report.reason
    assert callback.marker_entry() == {"compiled_from_step": None}  # decided: a resume stays eager too


def test_auto_never_compiles_where_it_was_not_measured_but_true_does(clock):
    blocked = LayerCompiling(FakeLayers(), "auto", "cuda", blocker="a GPU")
    state = State(max_steps=10_000)
    blocked.on_train_begin(None, state, None)
    _steps(blocked, state, [5.0, 5.0], clock)
    assert not blocked.layers.active and blocked.report.reason == "auto: off for a GPU"
    layerless = FakeLayers()
    layerless.layers = []
    unknown = LayerCompiling(layerless, "auto", "cpu")
    _steps(unknown, State(max_steps=10_000), [5.0, 5.0], clock)
    assert not layerless.active and "cannot find" in unknown.report.reason
    forced = LayerCompiling(FakeLayers(), True, "cuda", blocker="a GPU")
    forced.on_train_begin(None, State(max_steps=3), None)
    assert forced.layers.compiled_for == "cuda" and forced.report.compiled_from_step == 0
    assert not forced.layers.fall_back  # asked for: a failed compile is an error


def test_auto_is_off_for_each_setup_it_was_not_measured_on(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path)
    assert compile_blocker(cfg.train, cfg.method, on_gpu=False, quantized=False) == compiler_missing("cpu")
    assert compile_blocker(cfg.train, cfg.method, on_gpu=True, quantized=False).startswith("a GPU")
    assert compile_blocker(cfg.train, cfg.method, on_gpu=False, quantized=True) == "a quantized base"
    checkpointed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"gradient_checkpointing": True})})
    assert compile_blocker(checkpointed.train, checkpointed.method, on_gpu=False,
                           quantized=False) == "activation checkpointing"
    dpo = cfg.model_copy(update={"method": "dpo"})
    assert compile_blocker(dpo.train, dpo.method, on_gpu=False, quantized=False) == "dpo (measured for sft only)"


def test_a_resumed_run_follows_the_decision_its_checkpoint_records(clock):
    compiled = LayerCompiling(FakeLayers(), "auto", "cpu")
    compiled.resume({"step": 500, "compiled_from_step": 2})
    state = State(max_steps=1000)
    state.global_step = 500
    compiled.on_train_begin(None, state, None)
    assert compiled.layers.active and compiled.report.compiled_from_step == 2
    eager = LayerCompiling(FakeLayers(), "auto", "cpu")
    eager.resume({"step": 50, "compiled_from_step": None})
    eager.on_train_begin(None, state, None)
    _steps(eager, state, [100.0, 100.0], clock)  # would pay now, but the run decided otherwise
    assert not eager.layers.active
    undecided = LayerCompiling(FakeLayers(), "auto", "cpu")
    undecided.resume({"step": 1})  # saved before the decision: this session measures and decides
    assert not undecided.decided


def test_a_short_run_with_auto_stays_eager_and_its_checkpoints_say_so(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=4", "train.batch_size=2", "train.save_steps=2")
    summary = recipe.run(cfg)
    assert summary["compiled_from_step"] is None and summary["compile_seconds"] is None
    assert "steps of" in summary["compile_note"]
    marker = checkpoints.read_marker(cfg.output_dir / "checkpoints" / "checkpoint-4")
    assert marker["compiled_from_step"] is None


class GraphCount(TrainerCallback):
    """How many graphs dynamo has compiled in this process, after each step."""

    def __init__(self):
        self.per_step = []

    def on_step_end(self, args, state, control, **kwargs):
        self.per_step.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@pytest.mark.slow
@pytest.mark.skipif(compiler_missing("cpu") is not None, reason="torch.compile needs a C++ compiler")
def test_a_compiled_run_trains_as_an_eager_run_and_resumes_compiled(tiny_model_dir, tmp_path):
    args = ("train.max_steps=6", "train.batch_size=2", "train.save_steps=3", "train.eval_steps=3",
            "train.logging_steps=1", "train.save_total_limit=3")
    eager_cfg = tiny_config(tiny_model_dir, tmp_path / "eager", *args, "train.compile=false", eval_rows=ROWS)
    eager = recipe.run(eager_cfg)
    cfg = tiny_config(tiny_model_dir, tmp_path / "compiled", *args, "train.compile=true", eval_rows=ROWS)
    graphs = GraphCount()
    compiled = recipe.run(cfg, hooks=[graphs])
    # Everything compiles in the first step: nothing after it, not the evaluations between steps
    # (they run eager), not the new patterns of sample lengths in later passes.
    assert len(graphs.per_step) == 6 and graphs.per_step[0] > 0 and len(set(graphs.per_step)) == 1
    assert compiled["compiled_from_step"] == 0 and compiled["compile_seconds"] is not None
    assert compiled["compile_note"] == "train.compile is true"
    losses = [[r["loss"] for r in metrics(c.output_dir) if "loss" in r] for c in (eager_cfg, cfg)]
    assert len(losses[1]) == 6 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert compiled["eval_loss"] == pytest.approx(eager["eval_loss"], rel=1e-4)
    marker = checkpoints.read_marker(cfg.output_dir / "checkpoints" / "checkpoint-3")
    assert marker["compiled_from_step"] == 0

    # Resumed from step 3, compiled again from its first step: the same steps as the whole run.
    whole = adapter(cfg.output_dir)
    resumed = recipe.run(cfg, resume=str(cfg.output_dir / "checkpoints" / "checkpoint-3"))
    assert resumed["compiled_from_step"] == 0 and resumed["compile_note"] == "the resumed run's decision"
    for key, value in adapter(cfg.output_dir).items():
        assert_close_at_scale(value, whole[key], rtol=1e-5, msg=key)


@pytest.mark.gpu
def test_a_compiled_run_on_a_gpu_trains_as_an_eager_one(tiny_model_dir, tmp_path):
    """train.compile=true on CUDA (auto leaves GPUs alone until this has run there): bf16 weights and autocast."""
    args = ("train.max_steps=6", "train.batch_size=2", "train.logging_steps=1", "model.dtype=bfloat16",
            "train.precision=bf16")
    runs = [recipe.run(tiny_config(tiny_model_dir, tmp_path / kind, *args, f"train.compile={setting}"))
            for kind, setting in (("eager", "false"), ("compiled", "true"))]
    assert runs[1]["compiled_from_step"] == 0 and runs[0]["compiled_from_step"] is None
    losses = [[r["loss"] for r in metrics(tmp_path / kind / "run") if "loss" in r] for kind in ("eager", "compiled")]
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)  # bf16: compiled kernels round differently
