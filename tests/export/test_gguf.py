"""GGUF export: names and layouts llama.cpp expects, and a file transformers reads back the same.

Tolerances, against the merged float32 model:
  f16   max |logit difference| <= 1% of the largest |logit|, and the same greedy answer;
  q8_0  mean |logit difference| <= 2% and max <= 8% of the largest |logit|, same top token at
        >= 90% of positions (measured on SmolLM2-135M: mean 0.6%, max 3.5%, 95% agreement).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from lorakit.config import ModelConfig
from lorakit.data.encode import encode_conversation
from lorakit.data.templates import resolve_template
from lorakit.export.gguf import GgufExportError, export_gguf, gguf_tensor_name, interleave_rope_rows, write_gguf
from lorakit.export.gguf_vocab import LLAMA3_SPLIT, VocabExportError, llama_cpp_pre_name
from lorakit.export.merge import merged_model
from lorakit.model.gguf_cache import embedded_gguf
from lorakit.model.loader import resolve_model_folder
from tests.conftest import make_tokenizer, needs_embedded
from tests.export.conftest import make_run_dir

CONVERSATION = [
    {"role": "system", "content": "Answer with JSON only."},
    {"role": "user", "content": "Maria, 34, lives in Lisbon."},
    {"role": "assistant", "content": '{"name": "Maria", "age": 34, "city": "Lisbon"}'},
]


def load_gguf(path: Path):
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def greedy(model, ids: torch.Tensor, n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def assert_trainer_tokens_equal_gguf_tokens(run_dir: Path, gguf_tokenizer) -> None:
    """The conversation as the trainer encoded it == as the GGUF's own template and vocabulary give it."""
    run_tokenizer = AutoTokenizer.from_pretrained(run_dir)
    trained = encode_conversation(run_tokenizer, resolve_template(run_tokenizer, "auto"), CONVERSATION, 512).input_ids
    text = gguf_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert gguf_tokenizer(text, add_special_tokens=False)["input_ids"] == trained
    prompt = gguf_tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    prompt_ids = gguf_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert trained[: len(prompt_ids)] == prompt_ids


def test_tensor_names_match_the_gguf_package_map(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    reference = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    for hf_name in model.state_dict():
        module, _, kind = hf_name.rpartition(".")
        assert gguf_tensor_name(hf_name) == f"{reference.get_name(module)}.{kind}", hf_name
    with pytest.raises(GgufExportError, match="no place"):
        gguf_tensor_name("model.layers.0.self_attn.rotary.weight")


def test_rope_row_order_is_what_transformers_reader_undoes():
    processor = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    q, k = torch.randn(32, 24), torch.randn(16, 24)
    back_q = processor.process(interleave_rope_rows(q, 4).numpy(), "blk.0.attn_q.weight").weights
    back_k = processor.process(interleave_rope_rows(k, 2).numpy(), "blk.0.attn_k.weight").weights
    assert np.array_equal(back_q, q.numpy()) and np.array_equal(back_k, k.numpy())
    assert not np.array_equal(interleave_rope_rows(q, 4).numpy(), q.numpy())


@pytest.fixture(scope="module")
def tiny_merged(tiny_run):
    model, tokenizer, _ = merged_model(tiny_run)
    return model, tokenizer


def test_tiny_f16_round_trip(tiny_run, tiny_merged, tmp_path):
    merged, _ = tiny_merged
    path, modelfile = export_gguf(tiny_run, tmp_path / "tiny.gguf", "f16")
    model, tokenizer = load_gguf(path)
    assert modelfile == tmp_path / "Modelfile"
    ids = torch.tensor([[3, 17, 250, 42, 99, 7, 311, 5, 128, 64]])
    with torch.no_grad():
        want, got = merged(input_ids=ids).logits, model(input_ids=ids).logits
    assert (got - want).abs().max() <= 0.01 * want.abs().max()
    assert greedy(model, ids, 12) == greedy(merged, ids, 12)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_run).chat_template
    assert_trainer_tokens_equal_gguf_tokens(tiny_run, tokenizer)


def test_tiny_q8_0_round_trip(tiny_run, tiny_merged, tmp_path):
    merged, _ = tiny_merged
    path, _ = export_gguf(tiny_run, tmp_path / "tiny-q8.gguf", "q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    model, _ = load_gguf(path)
    ids = torch.randint(0, 390, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = merged(input_ids=ids).logits, model(input_ids=ids).logits
    scale = want.abs().max()
    diff = (got - want).abs()
    assert diff.mean() <= 0.02 * scale and diff.max() <= 0.08 * scale
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9


def test_only_llama_is_exported(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(GgufExportError, match="Llama-architecture"):
        write_gguf(model, make_tokenizer("chatml"), tmp_path / "x.gguf", "f16", "x")
    assert not (tmp_path / "x.gguf").exists()


def test_export_command(tiny_run, tmp_path):
    out = tmp_path / "cli" / "model.gguf"
    result = subprocess.run(
        [sys.executable, "-m", "lorakit", "export", "gguf", str(tiny_run), "--out", str(out), "--type", "q8_0"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    text = (out.parent / "Modelfile").read_text()
    assert text.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|im_end|>"' in text
    with pytest.raises(GgufExportError, match="neither a run folder"):
        export_gguf(tmp_path, out)


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert llama_cpp_pre_name(byte_level) == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert llama_cpp_pre_name({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    # Llama 3's shape: its split regex, then byte-level mapping without GPT-2's own regex.
    split = {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False}
    no_regex = {**byte_level, "use_regex": False}
    assert llama_cpp_pre_name({"type": "Sequence", "pretokenizers": [split, no_regex]}) == "llama-bpe"
    with pytest.raises(VocabExportError, match="not one of those"):
        llama_cpp_pre_name({"type": "Metaspace", "replacement": "_"})


# --- the embedded SmolLM2 ------------------------------------------------------------------

@needs_embedded
def test_embedded_export_matches_the_original_gguf(embedded_cache, tmp_path):
    """Our export of the embedded base against the GGUF llama.cpp's converter wrote for it."""
    folder = Path(resolve_model_folder(ModelConfig(cache_dir=embedded_cache)))
    path, _ = export_gguf(folder, tmp_path / "smol.gguf", "f16")
    original, ours = gguf.GGUFReader(embedded_gguf()), gguf.GGUFReader(path)
    for key, field in original.fields.items():
        if key.startswith(("llama.", "tokenizer.")) and key != "tokenizer.ggml.pre":
            assert ours.fields[key].contents() == field.contents(), key
    # SmolLM2 has no merges with digits, so GPT-2 splitting equals llama.cpp's "smollm" here.
    assert ours.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    theirs = {t.name: t for t in original.tensors}
    mine = {t.name: t for t in ours.tensors}
    assert theirs.keys() == mine.keys()
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.29.ffn_down.weight"):
        a = gguf.dequantize(theirs[name].data, theirs[name].tensor_type).reshape(-1)
        b = gguf.dequantize(mine[name].data, mine[name].tensor_type).reshape(-1)
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max(), name


@needs_embedded
def test_embedded_run_round_trip(embedded_cache, tmp_path):
    run = make_run_dir(tmp_path / "run", "smollm2-135m-instruct", "lora.rank=4", "lora.target_modules=[q_proj,v_proj]",
                       cache_dir=embedded_cache)
    merged, run_tokenizer, _ = merged_model(run)
    path, modelfile = export_gguf(run, tmp_path / "smol.gguf", "f16")
    model, tokenizer = load_gguf(path)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = run_tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([run_tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    answer = greedy(merged, ids, 16)
    assert greedy(model, ids, 16) == answer
    assert "Paris" in run_tokenizer.decode(answer)
    assert_trainer_tokens_equal_gguf_tokens(run, tokenizer)
    assert "You are a helpful AI assistant named SmolLM" in modelfile.read_text()
