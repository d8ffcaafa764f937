"""A checkpoint saved already quantized (a ``*-bnb-4bit`` repo): loaded as it is, trained with
QLoRA, reloaded with plain peft, merged into a plain folder and exported to GGUF."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorakit.config import QuantizationConfig
from lorakit.config_file import load_config, read_saved_config
from lorakit.model.adapter import load_run_model
from lorakit.model.dtype import resolve_dtype
from lorakit.model.loader import load_model
from lorakit.model.quantization import (QuantizationMismatchError, QuantizationShapeError, cpu_4bit_kernel_repacks,
                                        is_quantized)
from tests.conftest import QLORA_SIZES, make_prequantized_dir, write_jsonl
from tests.train.helpers import ROWS, metrics

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                reason="bitsandbytes not installed: pip install 'lorakit[qlora]'")
IDS = torch.tensor([[3, 17, 250, 42, 99, 7, 311, 5]])


@pytest.fixture(scope="module")
def prequantized(tmp_path_factory) -> Path:
    return make_prequantized_dir(tmp_path_factory.mktemp("prequantized") / "tiny-bnb-4bit")


@pytest.fixture(scope="module")
def trained(prequantized, tmp_path_factory) -> tuple[Path, dict]:
    """Four QLoRA steps on the pre-quantized folder through the recipe, no model.quantization set."""
    from lorakit.train import recipe

    tmp = tmp_path_factory.mktemp("qlora-run")
    data = write_jsonl(tmp / "train.jsonl", ROWS * 4)
    out = tmp / "run"
    summary = recipe.run(load_config(None, [
        f"model.name={prequantized}", f"data.train={data}", f"output_dir={out}", "train.max_steps=4",
        "train.batch_size=4", "train.learning_rate=0.02", "train.warmup=0", "train.logging_steps=1",
        "train.progress_bar=false", "lora.rank=4", "lora.dropout=0",
    ]))
    return out, summary


def linear4bit(model) -> list[str]:
    return [name for name, m in model.named_modules() if type(m).__name__ == "Linear4bit"]


def test_the_fixture_is_saved_quantized(prequantized):
    saved = json.loads((prequantized / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "bitsandbytes" and saved["load_in_4bit"]
    assert saved["bnb_4bit_quant_type"] == "nf4" and saved["bnb_4bit_use_double_quant"]
    weights = load_file(prequantized / "model.safetensors")
    packed = weights["model.layers.0.mlp.up_proj.weight"]
    assert packed.dtype == torch.uint8  # two 4-bit values a byte: 128 x 64 weights in 4096 bytes
    assert packed.numel() == QLORA_SIZES["intermediate_size"] * QLORA_SIZES["hidden_size"] // 2


def test_loads_as_saved_without_a_second_quantization_config(prequantized):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(str(prequantized), "float32")
    assert not [w for w in caught if "already has a `quantization_config`" in str(w.message)]
    assert is_quantized(model)  # so apply_lora prepares it for QLoRA
    assert len(linear4bit(model)) == 2 * 7  # q k v o gate up down in each of 2 layers
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested
    assert layer.compute_dtype == torch.float32  # model.dtype
    # The same model plain transformers loads from the folder.
    plain = AutoModelForCausalLM.from_pretrained(prequantized, device_map="cpu", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, plain(input_ids=IDS).logits)


def test_apply_lora_prepares_the_prequantized_base_for_qlora(prequantized, monkeypatch):
    from lorakit.config import LoraConfig
    from lorakit.model import lora

    prepared = []
    real = lora.prepare_model_for_kbit_training
    monkeypatch.setattr(lora, "prepare_model_for_kbit_training",
                        lambda model, **kw: prepared.append(model) or real(model, **kw))
    model = lora.apply_lora(load_model(str(prequantized), "float32"), LoraConfig(rank=4))
    assert len(prepared) == 1
    assert not [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]  # base frozen
    assert type(model.base_model.model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"  # peft's 4-bit LoRA


def test_compute_dtype_follows_model_dtype(prequantized):
    try:
        resolve_dtype("bfloat16")
    except ValueError as err:
        pytest.skip(f"this CPU cannot compute bfloat16: {err}")
    model = load_model(str(prequantized), "bfloat16")
    assert model.model.layers[0].mlp.down_proj.compute_dtype == torch.bfloat16
    explicit = load_model(str(prequantized), "float32", QuantizationConfig(compute_dtype="bfloat16"))
    assert explicit.model.layers[0].mlp.down_proj.compute_dtype == torch.bfloat16


def test_restating_the_checkpoint_quantization_is_accepted(prequantized):
    model = load_model(str(prequantized), "float32", QuantizationConfig(bits=4, type="nf4", double_quant=True))
    assert len(linear4bit(model)) == 14


@pytest.mark.parametrize("asked, says", [
    (QuantizationConfig(bits=8), "asks for 8-bit"),
    (QuantizationConfig(bits=4, type="fp4"), "asks for 4-bit fp4"),
    (QuantizationConfig(bits=4, double_quant=False), "double_quant false"),
])
def test_a_different_quantization_is_refused(prequantized, asked, says):
    with pytest.raises(QuantizationMismatchError, match="already quantized") as err:
        load_model(str(prequantized), "float32", asked)
    assert says in str(err.value) and "4-bit nf4, double_quant true" in str(err.value)
    assert "Remove model.quantization" in str(err.value)


def test_an_8bit_checkpoint_loads_as_saved_and_refuses_4bit(tmp_path):
    folder = make_prequantized_dir(tmp_path / "tiny-bnb-8bit", bits=8)
    model = load_model(str(folder), "float32")
    assert is_quantized(model) and type(model.model.layers[1].mlp.down_proj).__name__ == "Linear8bitLt"
    assert type(load_model(str(folder), "float32", QuantizationConfig(bits=8)).model.layers[0].mlp.up_proj
                ).__name__ == "Linear8bitLt"
    with pytest.raises(QuantizationMismatchError, match=r"asks for 4-bit nf4.*already quantized \(8-bit\)"):
        load_model(str(folder), "float32", QuantizationConfig(bits=4))


def test_a_checkpoint_quantized_another_way_is_refused_with_the_way_out(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (tiny_model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantizationMismatchError, match=r"quantized with 'gptq'.*Give the full-precision model"):
        load_model(str(tiny_model_dir), "float32")


@pytest.mark.skipif(not cpu_4bit_kernel_repacks(), reason="only CPUs with AVX512-BF16 have the 4-bit kernel that refuses")
def test_a_prequantized_checkpoint_this_cpu_cannot_run_is_refused_naming_the_layers(tmp_path):
    folder = make_prequantized_dir(tmp_path / "tiny-32-bnb-4bit", hidden_size=32, intermediate_size=64)
    with pytest.raises(QuantizationShapeError, match=r"model\.layers\.0\.self_attn\.q_proj \(32 -> 32\)"):
        load_model(str(folder), "float32")


@pytest.mark.slow
def test_the_cli_refuses_a_different_quantization_with_the_reason(prequantized, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    result = subprocess.run(
        [sys.executable, "-m", "lorakit", "train", "--set", f"model.name={prequantized}", "--set", f"data.train={data}",
         "--set", f"output_dir={tmp_path / 'run'}", "--set", "model.quantization={bits: 8}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "already quantized (4-bit nf4, double_quant true)" in result.stderr
    assert "Traceback" not in result.stderr


def test_qlora_trains_on_the_prequantized_base(trained, prequantized):
    out, summary = trained
    assert summary["steps"] == 4
    losses = [r["loss"] for r in metrics(out) if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    full = AutoModelForCausalLM.from_pretrained(prequantized.with_name(prequantized.name + "-full"))
    assert summary["memory_footprint_bytes"] < full.get_memory_footprint()  # the base stayed 4-bit
    assert read_saved_config(out / "lorakit.yaml").model.quantization is None  # nothing asked, nothing needed
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter.items())


def test_plain_peft_reloads_the_adapter_on_the_prequantized_base(trained, prequantized):
    out, _ = trained
    cfg = read_saved_config(out / "lorakit.yaml")
    ours = load_run_model(out, cfg.model, AutoTokenizer.from_pretrained(out)).eval()
    assert type(ours.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    plain_base = AutoModelForCausalLM.from_pretrained(prequantized, device_map="cpu", dtype=torch.float32)
    plain = PeftModel.from_pretrained(plain_base, out).eval()
    with torch.no_grad():
        tuned = ours(input_ids=IDS).logits
        assert torch.equal(tuned, plain(input_ids=IDS).logits)
        with ours.disable_adapter():
            assert (tuned - ours(input_ids=IDS).logits).abs().max() > 1e-3  # the adapter changes outputs


def tuned_logits(run_dir: Path) -> torch.Tensor:
    """4-bit base + adapter computed as in training (train mode; dropout is 0). In eval mode, on a
    CPU with AVX512-BF16, bitsandbytes 0.50 repacks the 4-bit weights in place for a bf16 kernel
    whose logits differ from the dequantized weights' by ~0.1 here; a GPU has no such path."""
    cfg = read_saved_config(run_dir / "lorakit.yaml")
    model = load_run_model(run_dir, cfg.model, AutoTokenizer.from_pretrained(run_dir)).train()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_merge_gives_a_plain_folder_computing_what_4bit_plus_adapter_did(trained, tmp_path):
    from lorakit.export.merge import merge_run

    out, _ = trained
    folder = merge_run(out, tmp_path / "merged")
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert not linear4bit(merged) and merged.dtype == torch.float32
    with torch.no_grad():
        assert (merged(input_ids=IDS).logits - tuned_logits(out)).abs().max() < 1e-4


def test_gguf_export_of_the_run_reads_back_with_the_merged_weights(trained, tmp_path):
    import gguf

    from lorakit.export.gguf import export_gguf
    from lorakit.export.merge import merged_model

    out, _ = trained
    path, modelfile = export_gguf(out, tmp_path / "tiny.gguf", "f16")
    assert modelfile.is_file()
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    tensors = {t.name: t for t in reader.tensors}
    assert {"token_embd.weight", "blk.1.ffn_up.weight", "blk.1.attn_v.weight"} <= tensors.keys()
    merged, _, _ = merged_model(out)
    expected = merged.model.layers[1].mlp.up_proj.weight.detach().to(torch.float16).numpy()
    up = tensors["blk.1.ffn_up.weight"]
    assert up.tensor_type == gguf.GGMLQuantizationType.F16
    assert (up.data.reshape(expected.shape) == expected).all()  # dequantized + adapter, exported as is


def test_adapter_gguf_with_base_writes_the_dequantized_base(trained, tmp_path):
    import gguf

    from lorakit.export.gguf_adapter import export_adapter_gguf
    from lorakit.model.adapter import load_run_base
    from lorakit.model.loader import load_tokenizer

    out, _ = trained
    adapter, modelfile, base_path = export_adapter_gguf(out, tmp_path / "adapter.gguf", "f16", with_base=True)
    assert adapter.is_file() and modelfile.is_file() and base_path.is_file()
    tensors = {t.name: t for t in gguf.GGUFReader(base_path).tensors}
    assert not any(".absmax" in name or "quant" in name for name in tensors)  # no packed 4-bit state
    # The base beside the adapter holds the 4-bit values the adapter was trained on, dequantized.
    cfg = read_saved_config(out / "lorakit.yaml")
    base = load_run_base(cfg.model, load_tokenizer(str(out)), dtype="float32", dequantize=True)
    expected = base.model.layers[1].mlp.up_proj.weight.detach().to(torch.float16).numpy()
    up = tensors["blk.1.ffn_up.weight"]
    assert (up.data.reshape(expected.shape) == expected).all()
