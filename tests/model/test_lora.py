"""Adapters: what is saved reloads to the same model; targets that miss are explained."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lorakit.config import LoraConfig
from lorakit.model.lora import TargetModulesError, apply_lora


def test_saved_adapter_reloads_to_identical_logits(tiny_model_dir, tmp_path):
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(rank=4, dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapter do something
                param.normal_(std=0.5)
    model.eval()
    ids = torch.randint(0, 300, (2, 12))
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain = fresh(input_ids=ids).logits
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    got = reloaded(input_ids=ids).logits
    assert torch.equal(got, expected)
    assert not torch.allclose(plain, expected)  # the adapter changes the output


def test_targets_that_match_nothing_list_real_names(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(TargetModulesError) as info:
        apply_lora(model, LoraConfig(target_modules=["query_key_value"]))
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"):
        assert name in str(info.value)


def test_regex_targets_pick_named_layers(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = apply_lora(model, LoraConfig(target_modules=r".*layers\.1\.self_attn\.(q|v)_proj"))
    wrapped = {n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and "lora_A" not in n.split(".")[-1]}
    assert wrapped == {
        "base_model.model.model.layers.1.self_attn.q_proj",
        "base_model.model.model.layers.1.self_attn.v_proj",
    }
