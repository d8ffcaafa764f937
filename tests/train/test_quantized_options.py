"""QLoRA reaches the sharding options: fsdp and ZeRO-3 get a quantized base they can shard."""

from __future__ import annotations

import pytest
import torch

from lorakit.config import QuantizationConfig
from lorakit.config.train import DistributedConfig
from lorakit.config_file import load_config
from lorakit.train import distributed, recipe
from lorakit.train.trainer import training_arguments
from tests.train.helpers import tiny_config


def test_only_fsdp_and_zero3_shard_the_weights():
    shards = {s: distributed.shards_weights(DistributedConfig(strategy=s))
              for s in ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")}
    assert shards == {"ddp": False, "fsdp": True, "deepspeed_zero2": False, "deepspeed_zero3": True}


def test_sharded_4bit_weights_are_stored_in_the_compute_dtype():
    pytest.importorskip("bitsandbytes")
    from lorakit.model.quantization import bnb_config

    cfg = QuantizationConfig(compute_dtype="bfloat16")
    assert bnb_config(cfg, "float32", sharded=True).bnb_4bit_quant_storage == torch.bfloat16
    assert bnb_config(cfg, "float32").bnb_4bit_quant_storage == torch.uint8  # one copy per rank: packed bytes


def test_training_arguments_hand_quantized_to_the_strategy_options(tmp_path, monkeypatch):
    asked: list[bool] = []
    real = distributed.trainer_options

    def spy(cfg, on_gpu, activation_checkpointing, quantized=False):
        asked.append(quantized)
        return real(cfg, on_gpu, activation_checkpointing, quantized=quantized)

    monkeypatch.setattr(distributed, "trainer_options", spy)
    train = load_config(None, []).train
    training_arguments(train, tmp_path, 0, "fp32", on_gpu=False, has_eval=False, quantized=True)
    training_arguments(train, tmp_path, 0, "fp32", on_gpu=False, has_eval=False)
    assert asked == [True, False]
    # What the flag turns into for the strategies that shard (their options, checked without a GPU).
    fsdp = real(DistributedConfig(strategy="fsdp"), True, False, quantized=True)["fsdp_config"]
    zero3 = real(DistributedConfig(strategy="deepspeed_zero3"), True, False, quantized=True)["deepspeed"]
    assert fsdp["cpu_ram_efficient_loading"] is True and zero3["zero3_init_flag"] is False


@pytest.mark.parametrize("bits", [None, 4])
def test_the_recipe_tells_the_trainer_whether_the_base_is_quantized(qlora_model_dir, tmp_path, monkeypatch, bits):
    if bits:
        pytest.importorskip("bitsandbytes")
    seen: list[bool] = []
    real = recipe.training_arguments

    def spy(*args, quantized=False, **kwargs):
        seen.append(quantized)
        return real(*args, quantized=quantized, **kwargs)

    monkeypatch.setattr(recipe, "training_arguments", spy)
    extra = [f"model.quantization={{bits: {bits}, compute_dtype: float32}}"] if bits else []
    recipe.run(tiny_config(qlora_model_dir, tmp_path, "train.max_steps=1", "train.batch_size=2", *extra))
    assert seen == [bits == 4]
