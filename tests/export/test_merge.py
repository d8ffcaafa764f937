"""Merging: the merged folder is plain transformers and computes what base + adapter computed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorakit.config_file import read_saved_config
from lorakit.export.merge import MergeError, merge_run
from lorakit.run import NotARunError
from lorakit.model.adapter import load_run_model
from tests.export.conftest import make_run_dir

# Merging in float32 reorders one addition per weight, so logits agree to float32 rounding.
MERGE_ATOL = 1e-4
IDS = torch.tensor([[3, 17, 250, 42, 99, 7, 311, 5, 128, 64]])


def adapter_logits(run_dir, ids=IDS):
    cfg = read_saved_config(run_dir / "lorakit.yaml")
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = load_run_model(run_dir, cfg.model, tokenizer).eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    return logits, base


def test_merged_folder_loads_plainly_and_matches_base_plus_adapter(tiny_run, tmp_path):
    expected, base = adapter_logits(tiny_run)
    assert (expected - base).abs().max() > 0.05  # the adapter matters, so the comparison means something

    out = merge_run(tiny_run, tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        got = model(input_ids=IDS).logits
    assert (got - expected).abs().max() < MERGE_ATOL
    # The template the run trained with travels with the merged model, and generation stops at its end.
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_run).chat_template
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_merged_folder_has_ordinary_permissions(tiny_run, tmp_path):
    import os
    import stat

    previous = os.umask(0o022)  # the common default, whatever this process had
    try:
        out = merge_run(tiny_run, tmp_path / "merged")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's 0700
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}


def test_merge_dtype_and_refusals(tiny_run, tmp_path):
    out = merge_run(tiny_run, tmp_path / "bf16", dtype="bfloat16")
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    with pytest.raises(MergeError, match="not empty"):
        merge_run(tiny_run, out)
    with pytest.raises(NotARunError, match="not a lorakit run folder"):
        merge_run(tmp_path, tmp_path / "x")


def test_new_tokens_and_pad_survive_merge(tiny_llama, tmp_path):
    run = make_run_dir(tmp_path / "run", str(tiny_llama), "lora.rank=4",
                       "model.special_tokens=[<tool>, </tool>]", "model.pad_token=<pad>")
    tokenizer = AutoTokenizer.from_pretrained(run)
    ids = torch.tensor([[5, 6, tokenizer.convert_tokens_to_ids("<tool>"), 7, tokenizer.convert_tokens_to_ids("</tool>")]])
    expected, _ = adapter_logits(run, ids)

    merged = merge_run(run, tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    tok = AutoTokenizer.from_pretrained(merged)
    assert tok.pad_token == "<pad>" and "<tool>" in tok.all_special_tokens
    assert tok("a <tool> b", add_special_tokens=False)["input_ids"].count(tok.convert_tokens_to_ids("<tool>")) == 1
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == 403
    assert model.config.tie_word_embeddings  # one trained embedding serves input and output
    with torch.no_grad():
        assert (model(input_ids=ids).logits - expected).abs().max() < MERGE_ATOL


@pytest.mark.slow
def test_merge_command(tiny_run, tmp_path):
    out = tmp_path / "merged-cli"
    result = subprocess.run([sys.executable, "-m", "lorakit", "merge", str(tiny_run), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file()
    assert "merged" in result.stderr


def expected_weighted_logits(base_dir, runs, weights, ids=IDS):
    """W + sum(w * scale * B @ A) from the adapter files alone, without peft."""
    from safetensors.torch import load_file

    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    state = model.state_dict()
    for run, weight in zip(runs, weights):
        config = json.loads((run / "adapter_config.json").read_text())
        scale = config["lora_alpha"] / (config["r"] ** 0.5 if config["use_rslora"] else config["r"])
        tensors = load_file(run / "adapter_model.safetensors")
        for key, a in tensors.items():
            if key.endswith("lora_A.weight"):
                b = tensors[key.replace("lora_A", "lora_B")]
                target = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
                state[target] += weight * scale * (b @ a)
    model.load_state_dict(state)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_weighted_merge_of_two_adapters(tiny_llama, tiny_run, tmp_path):
    other = make_run_dir(tmp_path / "other", str(tiny_llama), "lora.rank=8", "lora.use_rslora=true",
                         "lora.target_modules=[q_proj,k_proj,down_proj]", seed=1)
    out = merge_run(tiny_run, tmp_path / "merged", others=[other], weights=[0.7, 0.3])
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = model(input_ids=IDS).logits
    assert (got - expected_weighted_logits(tiny_llama, [tiny_run, other], [0.7, 0.3])).abs().max() < MERGE_ATOL
    alone = expected_weighted_logits(tiny_llama, [tiny_run], [1.0])
    assert (got - alone).abs().max() > 0.01  # the second adapter contributed

    with pytest.raises(MergeError, match="one weight per adapter"):
        merge_run(tiny_run, tmp_path / "x", others=[other], weights=[1.0])
    dora = make_run_dir(tmp_path / "dora", str(tiny_llama), "lora.rank=4", "lora.use_dora=true")
    with pytest.raises(MergeError, match="DoRA"):
        merge_run(tiny_run, tmp_path / "y", others=[dora])
