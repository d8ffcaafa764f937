"""GGUF export: names and layouts llama.cpp expects, and a file transformers reads back the same.

Tolerances, against the merged float32 model:
  f16   max |logit difference| <= 1% of the largest |logit|, and the same greedy answer;
  q8_0  mean |logit difference| <= 2% and max <= 8% of the largest |logit|, same top token at
        >= 90% of positions (measured on SmolLM2-135M: mean 0.6%, max 3.5%, 95% agreement).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from jinja2 import Template
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from lorakit.config import ModelConfig
from lorakit.data.encode import encode_conversation
from lorakit.templates import resolve_template
from lorakit.export.gguf import GgufExportError, _tensors, export_gguf, interleave_rope_rows
from lorakit.export.gguf_arch import TensorNames, check_config, split_qkv_per_head
from lorakit.export.gguf_vocab import (
    LLAMA3_SPLIT, QWEN2_SPLIT, VocabExportError, build_vocab, check_tokenizer, end_of_turn_id, llama_cpp_pre_name,
)
from lorakit.export.merge import merged_model
from lorakit.model.gguf_cache import embedded_gguf
from lorakit.model.loader import resolve_model_folder
from lorakit.run import NotARunError
from tests.conftest import ARCHITECTURES, arch_config, make_tokenizer, needs_embedded
from tests.export.conftest import make_run_dir

ARCH_SIZES = {"gemma2": {"query_pre_attn_scalar": 8}}  # what real Gemma 2 checkpoints have (and llama.cpp assumes)
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


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_tensor_gets_a_name_llama_cpp_expects_for_the_architecture(arch):
    """Each parameter of a tiny model lands on one of the tensors llama.cpp's architecture lists."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(arch_config(arch, make_tokenizer("chatml"), **ARCH_SIZES.get(arch, {})))
    spec = check_config(model.config)
    allowed = {gguf.TENSOR_NAMES[t].format(bid=b) for t in gguf.MODEL_TENSORS[spec.arch] for b in range(2)}
    written = [name for name, _, _ in _tensors(model, gguf.GGMLQuantizationType.F16)]
    assert len(written) == len(set(written))
    assert {n.rsplit(".", 1)[0] for n in written} <= allowed
    assert "token_embd.weight" in written and "blk.1.attn_output.weight" in written
    assert ("output.weight" in written) == (spec.output_when_tied or not model.config.tie_word_embeddings)
    with pytest.raises(GgufExportError, match="no place"):
        TensorNames(check_config(AutoConfig.for_model("llama")), 1000)("model.layers.0.self_attn.rotary.weight")


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
    assert modelfile == tmp_path / "tiny.Modelfile"
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


def test_bloom_qkv_rows_are_grouped_by_kind():
    # 2 heads of 2 dims: rows q0 q0 k0 k0 v0 v0 q1 q1 k1 k1 v1 v1 -> all q, all k, all v
    rows = torch.tensor([[0.0], [1], [10], [11], [20], [21], [2], [3], [12], [13], [22], [23]])
    assert split_qkv_per_head(rows, 2).flatten().tolist() == [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]


def _config_only_folder(folder: Path, config) -> Path:
    """A model folder with a config and a tokenizer but no weights: a refusal must come before loading them."""
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    make_tokenizer("chatml").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch,change,reason", [
    ("gemma2", {}, "query_pre_attn_scalar"),
    ("falcon", {"alibi": True, "parallel_attn": False}, "ALiBi positions .falcon-rw., sequential attention"),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, "rope scaling 'linear'"),
])
def test_unsupported_configs_are_refused_before_loading(tmp_path, arch, change, reason):
    cfg = arch_config(arch, make_tokenizer("chatml"), **change)
    folder = _config_only_folder(tmp_path / "model", cfg)
    with pytest.raises(GgufExportError, match=reason):
        export_gguf(folder, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.slow
def test_unknown_architecture_and_k_quants_are_refused_with_the_way_out(tmp_path, monkeypatch):
    from transformers import GPTNeoXConfig

    import lorakit.export.gguf as gguf_export

    folder = _config_only_folder(tmp_path / "neox", GPTNeoXConfig(vocab_size=400, hidden_size=32, num_hidden_layers=1,
                                                                  num_attention_heads=4, intermediate_size=64))
    with pytest.raises(GgufExportError, match="this one is 'gpt_neox'.*lorakit merge"):
        export_gguf(folder, tmp_path / "x.gguf")
    # k-quants come from llama.cpp's quantizer (tests/export/test_gguf_llamacpp.py): without its binding the
    # refusal names both ways out, and the k-quants it does not make are refused naming llama-quantize
    monkeypatch.setattr(gguf_export, "_has_llama_cpp", lambda: False)
    with pytest.raises(GgufExportError, match="pip install llama-cpp-python.*llama-quantize model.gguf model-q4_k_m"):
        export_gguf(folder, tmp_path / "x.gguf", "q4_k_m")
    monkeypatch.undo()
    with pytest.raises(GgufExportError, match="writes the k-quants q4_k_m, q5_k_m, q6_k; for others run `llama-quantize"):
        export_gguf(folder, tmp_path / "x.gguf", "q3_k_s")
    with pytest.raises(GgufExportError, match="choose one of f16, bf16, q8_0, q4_k_m"):
        export_gguf(folder, tmp_path / "x.gguf", "f32")
    result = subprocess.run([sys.executable, "-m", "lorakit", "export", "gguf", str(folder), "--out",
                             str(tmp_path / "x.gguf")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "this one is 'gpt_neox'" in result.stderr and "Traceback" not in result.stderr


def test_run_with_unsupported_tokenizer_is_refused_before_merging(tiny_run, tmp_path, monkeypatch):
    import lorakit.export.gguf as module

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    tokenizer = make_tokenizer("chatml")
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save_pretrained(run)
    monkeypatch.setattr(module, "merged_model", lambda *a: pytest.fail("merged before refusing"))
    with pytest.raises(VocabExportError, match="not one of those"):
        export_gguf(run, tmp_path / "x.gguf")


@pytest.mark.slow
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
    text = (out.parent / "model.Modelfile").read_text()
    assert text.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|im_end|>"' in text
    with pytest.raises(NotARunError, match="not a lorakit run folder"):
        export_gguf(tmp_path, out, overwrite=True)  # out exists now: without --overwrite that is refused first


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert llama_cpp_pre_name(byte_level) == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert llama_cpp_pre_name({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    # Llama 3's shape: its split regex, then byte-level mapping without GPT-2's own regex.
    split = {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False}
    no_regex = {**byte_level, "use_regex": False}
    assert llama_cpp_pre_name({"type": "Sequence", "pretokenizers": [split, no_regex]}) == "llama-bpe"
    qwen = {**split, "pattern": {"Regex": QWEN2_SPLIT}}
    assert llama_cpp_pre_name({"type": "Sequence", "pretokenizers": [qwen, no_regex]}) == "qwen2"
    assert QWEN2_SPLIT != LLAMA3_SPLIT and r"\p{N}|" in QWEN2_SPLIT
    with pytest.raises(VocabExportError, match="not one of those"):
        llama_cpp_pre_name({"type": "Metaspace", "replacement": "_"})


# --- the embedded SmolLM2 ------------------------------------------------------------------

@pytest.mark.slow
@needs_embedded
def test_embedded_export_matches_the_original_gguf(embedded_cache, tmp_path):
    """Our export of the embedded base against the GGUF llama.cpp's converter wrote for it."""
    folder = Path(resolve_model_folder(ModelConfig(cache_dir=embedded_cache)))
    path, _ = export_gguf(folder, tmp_path / "smol.gguf", "f16")
    original, ours = gguf.GGUFReader(embedded_gguf()), gguf.GGUFReader(path)
    for key, field in original.fields.items():
        if key.startswith(("llama.", "tokenizer.")):
            assert ours.fields[key].contents() == field.contents(), key
    assert ours.fields["tokenizer.ggml.pre"].contents() == "smollm"  # as the original says
    im_end = original.fields["tokenizer.ggml.tokens"].contents().index("<|im_end|>")
    assert ours.fields["tokenizer.ggml.eot_token_id"].contents() == im_end
    theirs = {t.name: t for t in original.tensors}
    mine = {t.name: t for t in ours.tensors}
    assert theirs.keys() == mine.keys()
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.29.ffn_down.weight"):
        a = gguf.dequantize(theirs[name].data, theirs[name].tensor_type).reshape(-1)
        b = gguf.dequantize(mine[name].data, mine[name].tensor_type).reshape(-1)
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max(), name


@pytest.mark.slow
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


def test_sentencepiece_vocabulary():
    from tests.export.spm import make_spm_tokenizer

    tokenizer = make_spm_tokenizer("zephyr")
    vocab = build_vocab(tokenizer, len(tokenizer) + 3, end_of_turn_id(tokenizer))
    assert (vocab.model, vocab.pre, vocab.merges, vocab.add_space_prefix) == ("llama", None, [], True)
    assert vocab.types[:3] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert vocab.tokens[3 + 0x41] == "<0x41>" and vocab.types[3 + 0x41] == gguf.TokenType.BYTE
    assert vocab.types[-3:] == [gguf.TokenType.UNUSED] * 3
    assert vocab.special_ids["eot"] == vocab.special_ids["eos"] == tokenizer.convert_tokens_to_ids("</s>")
    # llama.cpp joins the pair whose token scores highest: the earlier merge must score higher
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    first, later = ("".join(m) if isinstance(m, list) else m.replace(" ", "") for m in (merges[0], merges[-1]))
    ids = tokenizer.get_vocab()
    assert vocab.scores[ids[first]] > vocab.scores[ids[later]]
    # transformers 5's form (Metaspace): llama.cpp's space prefix is chosen to split the chat prompts as it
    # does (test_gguf_llamacpp checks each choice with llama.cpp itself)
    for family, scheme, prefix in (("mistral", "first", False), ("mistral", "always", False), ("zephyr", "always", True)):
        tokenizer = make_spm_tokenizer(family, metaspace=scheme)
        vocab = build_vocab(tokenizer, len(tokenizer), None)
        assert (vocab.add_space_prefix, vocab.chat_template) == (prefix, tokenizer.chat_template), (family, scheme)
    # zephyr's prompts start with text, and "first" puts "▁" before that stretch only: no setting of the switch
    # does that, so the switch is off and the GGUF's template writes a leading space, which both tokenizers
    # turn into that "▁"
    tokenizer = make_spm_tokenizer("zephyr", metaspace="first")
    vocab = build_vocab(tokenizer, len(tokenizer), None)
    assert vocab.add_space_prefix is False and vocab.chat_template == '{{ " " }}' + tokenizer.chat_template
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "?"}]
    ours = Template(vocab.chat_template).render(messages=turns, eos_token="</s>", add_generation_prompt=True)
    theirs = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert ours == " " + theirs
    assert tokenizer(ours, add_special_tokens=False)["input_ids"] == tokenizer(theirs, add_special_tokens=False)["input_ids"]
    # a tokenizer no setting reproduces is refused with the prompt that differs: after a special token,
    # "always" writes one "▁" whether or not the text starts with a space, llama.cpp two or none
    spaced = make_spm_tokenizer("zephyr", metaspace="always")
    spaced.chat_template = "{% for m in messages %}{{ '</s> ' + m['content'] + '</s>' + '\n' }}{% endfor %}"
    with pytest.raises(VocabExportError, match="prepend_scheme='always'.*For the prompt '</s> "):
        check_tokenizer(spaced)


def test_gemma3_layer_pattern_and_attention_scale_are_checked(tmp_path):
    from transformers import Gemma3TextConfig

    sizes = dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8)
    assert check_config(Gemma3TextConfig(**sizes, query_pre_attn_scalar=8)).name == "gemma3"
    swapped = Gemma3TextConfig(**sizes, query_pre_attn_scalar=8, layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(GgufExportError, match="five sliding-window layers, then one global"):
        export_gguf(_config_only_folder(tmp_path / "a", swapped), tmp_path / "x.gguf")
    with pytest.raises(GgufExportError, match=r"1/sqrt\(256\) \(query_pre_attn_scalar\), but llama.cpp would by 1/sqrt\(8\)"):
        check_config(Gemma3TextConfig(**sizes))
