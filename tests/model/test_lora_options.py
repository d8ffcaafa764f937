"""peft's LoRA options as lorakit configures them: what trains, what is saved, what peft reads back."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lorakit.config import LoraConfig
from lorakit.config_file import load_config
from lorakit.model.lora import TargetModulesError, apply_lora
from lorakit.train import recipe
from tests.conftest import write_jsonl

ROWS = [
    {"instruction": "Say the city of Maria.", "input": "", "output": "Lisbon"},
    {"instruction": "What is two plus two?", "input": "", "output": "It is four."},
]


def wrapped(model) -> set[str]:
    return {n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A")
            and isinstance(m.lora_A, torch.nn.ModuleDict) and len(m.lora_A)}


@pytest.fixture(scope="module")
def twenty_layers() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=20,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def test_layer_regex_picks_exactly_layers_1_and_10_to_19(twenty_layers):
    import copy

    model = apply_lora(copy.deepcopy(twenty_layers),
                       LoraConfig(target_modules=r".*\.layers\.(1|1[0-9])\.self_attn\.(q|v)_proj"))
    expected = {f"model.layers.{i}.self_attn.{p}_proj" for i in [1, *range(10, 20)] for p in "qv"}
    assert wrapped(model) == expected


def test_layers_with_all_linear(twenty_layers):
    import copy

    model = apply_lora(copy.deepcopy(twenty_layers), LoraConfig(layers=[0, 7]))
    names = wrapped(model)
    assert {n.split(".")[2] for n in names} == {"0", "7"}
    assert len(names) == 2 * 7  # q k v o gate up down in each
    assert not any("lm_head" in n for n in names)
    with pytest.raises(TargetModulesError, match="regex"):
        apply_lora(copy.deepcopy(twenty_layers), LoraConfig(layers=[1], target_modules=r".*q_proj"))


def test_misses_are_named(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(TargetModulesError, match="qproj"):
        apply_lora(model, LoraConfig(target_modules=["q_proj", "qproj"]))  # one typo among real names
    with pytest.raises(TargetModulesError, match="embed_token'"):
        apply_lora(model, LoraConfig(modules_to_save=["embed_token"]))


def test_dora_rslora_bias_run_saves_what_peft_reads_back(tiny_model_dir, tmp_path, caplog):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS * 4)
    out = tmp_path / "run"
    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"data.train={data}", f"output_dir={out}", "train.max_steps=3",
        "train.batch_size=4", "train.progress_bar=false", "lora.rank=4", "lora.alpha=8", "lora.use_dora=true",
        "lora.use_rslora=true", "lora.bias=lora_only", "lora.dropout=0.1", "lora.modules_to_save=[model.norm]",
    ])
    with caplog.at_level(logging.INFO, logger="lorakit"):
        summary = recipe.run(cfg)
    assert any("trainable of" in r.message and "MiB in memory" in r.message for r in caplog.records)
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"]
    assert summary["memory_footprint_bytes"] > 0

    saved = PeftConfig.from_pretrained(out)
    assert saved.use_dora and saved.use_rslora and saved.bias == "lora_only" and saved.lora_dropout == 0.1
    assert saved.modules_to_save == ["model.norm"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(8 / math.sqrt(4))  # rsLoRA: alpha / sqrt(r)
    assert "default" in q_proj.lora_magnitude_vector  # DoRA's magnitudes came back
