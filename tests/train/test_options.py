"""Training options that change how steps are taken: optimizers, checkpointing, GPU-only switches."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lorakit.config import ConfigError
from lorakit.config_file import load_config
from lorakit.train import recipe
from lorakit.train.plan import pick_precision
from tests.train.helpers import metrics, tiny_config
from tests.tolerance import assert_close_at_scale


@pytest.mark.parametrize("optimizer", ["sgd", "adafactor"])
def test_other_optimizers_train(tiny_model_dir, tmp_path, optimizer):
    lr = "0.5" if optimizer == "sgd" else "0.02"
    cfg = tiny_config(tiny_model_dir, tmp_path, f"train.optimizer={optimizer}", f"train.learning_rate={lr}",
                      "train.max_steps=15", "train.batch_size=4", "train.logging_steps=1", "train.warmup=0",
                      "train.scheduler=constant", "train.save_steps=null", "lora.rank=8")
    recipe.run(cfg)
    seen = [r["loss"] for r in metrics(cfg.output_dir) if "loss" in r]
    assert sum(seen[-3:]) / 3 < sum(seen[:3]) / 3


def test_gradient_checkpointing_gives_the_same_update(tiny_model_dir, tmp_path):
    from tests.train.helpers import adapter

    runs = []
    for flag in ("false", "true"):
        cfg = tiny_config(tiny_model_dir, tmp_path / flag, f"train.gradient_checkpointing={flag}",
                          "train.max_steps=3", "train.batch_size=2", "train.save_steps=null")
        recipe.run(cfg)
        runs.append(adapter(cfg.output_dir))
    for key in runs[0]:
        assert_close_at_scale(runs[0][key], runs[1][key], rtol=1e-4, msg=key)


def test_checkpoint_and_eval_steps_must_line_up():
    with pytest.raises(ConfigError, match="multiple of eval_steps"):
        load_config(None, ["train.save_steps=10", "train.eval_steps=3"])


def test_precision_choices_on_cpu():
    assert pick_precision("fp32") == "fp32"
    assert pick_precision("auto") in ("fp32", "bf16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16 needs a GPU"):
            pick_precision("fp16")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_8bit_adamw(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.optimizer=adamw_8bit", "train.max_steps=4",
                      "train.batch_size=2", "train.save_steps=null", "train.logging_steps=1")
    recipe.run(cfg)
    assert len([r for r in metrics(cfg.output_dir) if "loss" in r]) == 4


@pytest.mark.gpu
def test_auto_batch_size_on_gpu(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.auto_batch_size=true", "train.batch_size=64",
                      "train.max_steps=2", "train.save_steps=null")
    summary = recipe.run(cfg)
    assert summary["steps"] == 2 and summary["cuda_peak_reserved_bytes"] > 0


@pytest.mark.parametrize("switch", ["train.packing=true", "train.group_by_length=true", "train.selective_loss=false"])
def test_speed_switches_still_learn(tiny_model_dir, tmp_path, switch):
    cfg = tiny_config(tiny_model_dir, tmp_path, switch, "train.max_steps=15", "train.batch_size=4",
                      "train.learning_rate=0.02", "train.logging_steps=1", "train.warmup=0",
                      "train.scheduler=constant", "train.save_steps=null", "lora.rank=8")
    summary = recipe.run(cfg)
    seen = [r["loss"] for r in metrics(cfg.output_dir) if "loss" in r]
    assert sum(seen[-3:]) / 3 < 0.8 * sum(seen[:3]) / 3
    assert summary["loss_tokens_seen"] > 0
