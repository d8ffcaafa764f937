"""The plan: every "auto" of a run resolved in one place, logged once, saved in summary.json as the run used it."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import TrainerCallback
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.model import dtype as dtype_module
from lorakit.model.dtype import resolve_dtype
from lorakit.train import plan as plan_module
from lorakit.train import recipe
from lorakit.train import trainer as trainer_module
from lorakit.train.methods import sft as sft_module
from lorakit.train.plan import PrecisionError, pick_precision
from tests.conftest import write_jsonl
from tests.train.helpers import ROWS, tiny_config


def test_fp16_weights_on_a_cpu_that_has_fp16_but_never_fp16_autocast(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dtype_module, "cpu_has_fp16", lambda: True)
    monkeypatch.setattr(plan_module, "cpu_has_fp16", lambda: True)
    assert resolve_dtype("float16") is torch.float16
    with pytest.raises(PrecisionError, match="fp16 needs a GPU.*set model.dtype=float16$"):
        pick_precision("fp16")


def test_the_reason_fp16_autocast_is_refused_on_a_cpu():
    """accelerate leaves fp16 mixed precision off on a CPU: a run asking for it would compute in float32."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # A fresh state before and after, as TrainingArguments makes before each run: an earlier
    # Trainer's state would refuse another mixed precision.
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator = Accelerator(cpu=True, mixed_precision="fp16")
        with accelerator.autocast():
            product = torch.ones(2, 2) @ torch.ones(2, 2)
        assert not accelerator.native_amp and accelerator.scaler is None and product.dtype is torch.float32
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_the_plan_is_logged_once_and_saved_as_the_run_used_it(tiny_model_dir, tmp_path, monkeypatch, caplog):
    used: dict = {}

    class Runner(trainer_module.PassRunner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            used["passes"] = self

    split_batch = sft_module.split_batch  # SFT's passes are planned in its method module

    def split(inputs, budget, packed):
        used["micro_batch_tokens"] = budget
        return split_batch(inputs, budget, packed)

    class Seen(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            used["threads"], used["bf16"] = torch.get_num_threads(), args.bf16

    monkeypatch.setattr(trainer_module, "PassRunner", Runner)
    monkeypatch.setattr(sft_module, "split_batch", split)
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=2", "train.batch_size=2", "train.save_steps=null")
    with caplog.at_level(logging.INFO, logger="lorakit"):
        summary = recipe.run(cfg, hooks=[Seen()])
    assert sum(r.getMessage().startswith("plan ") for r in caplog.records) == 1

    plan = summary["plan"]
    value = {name: entry["value"] for name, entry in plan.items() if isinstance(entry, dict)}
    assert all(entry["why"] for entry in plan.values() if isinstance(entry, dict))
    passes = used["passes"]
    assert value["device"] == "cpu" and value["threads"] == used["threads"]
    assert value["precision"] == summary["precision"] and (value["precision"] == "bf16") == used["bf16"]
    assert value["weight_dtype"] == summary["weights_dtype"]
    assert value["micro_batch_tokens"] == used["micro_batch_tokens"] == 1024
    assert value["pass_packing"] == passes.packed and value["attention"] == passes.own_attention
    assert value["eager_attention_tokens"] == passes.eager_tokens == 256  # tests/conftest.py pins it
    assert value["per_sample_attention"] == (passes.per_sample is not None)
    assert value["fused_lora"] == bool(passes.fused)
    assert value["compile"] == "auto"
    if plan["compile_blocker"]:
        assert summary["compile_note"] == f"auto: off for {plan['compile_blocker']}"
    else:  # auto timed the second step, as the plan said, and found no steps left to repay a compile
        assert summary["compile_note"].startswith("auto: 0 more steps")


def test_on_a_gpu_the_plan_keeps_the_models_own_ways(tiny_model_dir, monkeypatch):
    from lorakit.config_file import load_config
    from tests.conftest import tiny_lora_model

    model = tiny_lora_model(tiny_model_dir)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cfg = load_config(None, [])
    plan = plan_module.resolve_plan(cfg.model, cfg.train, "sft", model)
    assert (plan.device.value, plan.precision.value, plan.micro_batch_tokens.value) == ("cuda", "bf16", 0)
    assert plan.eager_attention_tokens.value == 0 and plan.attention.value == "sdpa"
    assert not plan.per_sample_attention.value and not plan.fused_lora.value
    assert plan.compile.value == "auto" and plan.compile_blocker.startswith("a GPU")
    assert plan.trainer_options()["compile_blocker"] == plan.compile_blocker


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("LORAKIT_CPU_PRECISION", "fast", "LORAKIT_CPU_PRECISION='fast': use fp32 or bf16"),
    ("LORAKIT_CPU_EAGER_TOKENS", "many", "LORAKIT_CPU_EAGER_TOKENS='many': give a number of positions"),
])
def test_a_bad_pin_is_one_line_from_the_cli(tiny_model_dir, tmp_path, monkeypatch, variable, value, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(variable, value)
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    result = CliRunner().invoke(app, ["train", "--set", f"model.name={tiny_model_dir}", "--set", f"data.train={data}",
                                      "--set", f"output_dir={tmp_path / 'run'}", "--set", "train.progress_bar=false"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {message}") and "Traceback" not in result.output
