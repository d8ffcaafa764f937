"""QLoRA through bitsandbytes, on this machine's CPU (bitsandbytes 0.50 has CPU 4-bit and 8-bit kernels)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from lorakit.config import QuantizationConfig
from lorakit.config_file import load_config, read_saved_config
from lorakit.export.merge import merge_run
from lorakit.model import quantization
from lorakit.model.adapter import load_run_model
from lorakit.model import loader
from lorakit.model.loader import load_model
from lorakit.model.quantization import QuantizationShapeError, QuantizationUnavailableError, bnb_config
from lorakit.train import recipe
from tests.conftest import write_jsonl

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="bitsandbytes not installed: pip install 'lorakit[qlora]'")
ROWS = [
    {"instruction": "Say the city of Maria.", "input": "", "output": "Lisbon"},
    {"instruction": "What is two plus two?", "input": "", "output": "It is four."},
]
IDS = torch.tensor([[3, 17, 250, 42, 99, 7, 311, 5]])


def test_config_maps_to_bitsandbytes():
    cfg = bnb_config(QuantizationConfig(bits=4, type="fp4", double_quant=False, compute_dtype="float32"), "float32")
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "fp4" and not cfg.bnb_4bit_use_double_quant
    assert cfg.bnb_4bit_compute_dtype == torch.float32
    assert bnb_config(QuantizationConfig(bits=8), "float32").load_in_8bit


def test_missing_bitsandbytes_says_how_to_install(monkeypatch):
    monkeypatch.setattr(quantization.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(QuantizationUnavailableError, match=r"pip install 'lorakit\[qlora\]'"):
        bnb_config(QuantizationConfig(), "float32")


@needs_bnb
def test_qlora_step_trains_reloads_and_merges(qlora_model_dir, tmp_path):
    tiny_model_dir = qlora_model_dir
    data = write_jsonl(tmp_path / "train.jsonl", ROWS * 4)
    out = tmp_path / "run"
    summary = recipe.run(load_config(None, [
        f"model.name={tiny_model_dir}", f"data.train={data}", f"output_dir={out}", "train.max_steps=4",
        "train.batch_size=4", "train.learning_rate=0.02", "train.warmup=0", "train.logging_steps=1",
        "train.progress_bar=false", "lora.rank=4", "lora.dropout=0",
        "model.quantization={bits: 4, type: nf4, double_quant: true, compute_dtype: float32}",
    ]))
    assert summary["steps"] == 4
    # The base really was 4-bit: its weights take far less memory than the float32 model's.
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert summary["memory_footprint_bytes"] < full.get_memory_footprint()
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter.items())  # B left zero: it trained

    # Reload: lorakit's loader and plain peft on a plain bitsandbytes load give the same model.
    cfg = read_saved_config(out / "lorakit.yaml")
    tokenizer = AutoTokenizer.from_pretrained(out)
    # Train mode (dropout is 0, so it computes the same function): on a CPU with AVX512-BF16,
    # bitsandbytes runs layers that are in eval mode without gradients through a bf16 kernel
    # (weights repacked, scales rounded to bf16). In train mode it dequantizes to the float32
    # compute dtype, which is the exact function the merge below must reproduce.
    ours = load_run_model(out, cfg.model, tokenizer).train()
    assert type(ours.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    plain_base = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, device_map="cpu", dtype=torch.float32,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32),
    )
    plain = PeftModel.from_pretrained(plain_base, out).train()
    with torch.no_grad():
        tuned = ours(input_ids=IDS).logits
        assert torch.equal(tuned, plain(input_ids=IDS).logits)
        with ours.disable_adapter():
            assert (tuned - ours(input_ids=IDS).logits).abs().max() > 1e-3

    # Merge dequantizes the 4-bit base first, so the merged model computes what 4-bit + adapter did.
    merged = AutoModelForCausalLM.from_pretrained(merge_run(out, tmp_path / "merged")).eval()
    assert "quantization_config" not in merged.config.to_dict()
    with torch.no_grad():
        assert (merged(input_ids=IDS).logits - tuned).abs().max() < 1e-4


@needs_bnb
def test_8bit_loads_and_wraps(tiny_model_dir):
    model = load_model(str(tiny_model_dir), "float32", QuantizationConfig(bits=8))
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear8bitLt"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: bf16 4-bit compute with device_map=auto")
@needs_bnb
def test_qlora_on_gpu_places_layers_and_computes_in_bf16(qlora_model_dir):
    model = load_model(str(qlora_model_dir), "auto", QuantizationConfig(bits=4, compute_dtype="auto"))
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.weight.device.type == "cuda" and layer.compute_dtype in (torch.bfloat16, torch.float16)


@needs_bnb
def test_shapes_the_4bit_cpu_kernel_refuses_are_named_before_loading(tiny_model_dir, monkeypatch):
    # hidden 32 and 2 key/value heads of 8: k_proj maps 32 -> 16, which the AVX512-BF16 kernel
    # cannot repack. The predicate is forced so the check runs on every CPU class.
    monkeypatch.setattr(loader, "cpu_4bit_kernel_repacks", lambda: True)
    with pytest.raises(QuantizationShapeError) as refused:
        load_model(str(tiny_model_dir), "float32", QuantizationConfig(bits=4))
    message = str(refused.value)
    assert str(tiny_model_dir) in message and "model.layers.0.self_attn.k_proj (32 -> 16)" in message
    assert "lm_head" not in message  # bitsandbytes leaves the head unquantized, so the check does too
    assert "bits=8" in message
    load_model(str(tiny_model_dir), "float32", QuantizationConfig(bits=8))  # 8-bit has no such limit


@needs_bnb
@pytest.mark.skipif(not quantization.cpu_4bit_kernel_repacks(), reason="this CPU has no AVX512-BF16: bitsandbytes "
                    "does not repack 4-bit weights here, so there is no kernel limit to compare the check with")
def test_the_shape_check_agrees_with_the_kernel():
    import bitsandbytes as bnb

    for (inputs, outputs), fits in {(32, 16): False, (64, 32): True, (128, 64): True, (64, 48): False}.items():
        layer = bnb.nn.Linear4bit(inputs, outputs, compute_dtype=torch.float32)
        layer.load_state_dict(torch.nn.Linear(inputs, outputs).state_dict())
        layer = layer.to("cpu").eval()  # quantized on placement
        ours = not (outputs % quantization.CPU_4BIT_ROW_BLOCK or inputs % quantization.CPU_4BIT_COLUMN_BLOCK)
        assert ours == fits
        with torch.no_grad():
            if fits:
                assert layer(torch.randn(2, inputs)).shape == (2, outputs)
            else:
                with pytest.raises((AssertionError, RuntimeError)):
                    layer(torch.randn(2, inputs))
