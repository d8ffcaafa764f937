"""Every family exported and judged by llama.cpp itself.

For a tiny random model of each architecture, with a tokenizer in that family's format,
trained with ``lorakit train`` (in-process) until it answers a trained prompt and stops:

* f16: llama.cpp renders each conversation with the GGUF's own chat template (its Jinja chat
  formatter) and tokenizes it to the ids training saw (the prompt text itself too, except where
  the GGUF's template leads with a space: see ``gguf_vocab.SpaceRule``), its greedy tokens
  equal transformers' on the merged model, and it stops at the family's end-of-turn token;
* bf16 and q8_0: llama.cpp's logits along the same tokens stay within the tolerances below;
* --adapter-only: the base GGUF with the GGUF LoRA on top (llama.cpp's LoRA support) gives
  the merged export's greedy tokens.

Tolerances, as fractions of the largest |logit| (mean and max |difference|, and "pick": how far
below transformers' best logit the token llama.cpp ranks first may be):
  f16    against the merged float32 model: max <= 4% (f16 rounding only: a wrong rope base, norm or
         row order shows at once), and equal greedy tokens;
  bf16, q8_0 on the tiny models: against transformers running the weights the file stores (rounded
         or quantized, then read back) mean <= 1%, max <= 12% and pick <= 10% (llama.cpp also rounds
         the activations: max up to 10.5% measured, mean 0.5%); against float32 mean <= 2% (their max reaches 56% on these
         random models, weights drawn with std 0.3, which real checkpoints do not have);
  q8_0 on SmolLM2: against float32 mean <= 2%, max <= 12%, pick <= 10% (measured up to 1.2% / 8.7% / 0.2%;
         transformers reading the same file gives 0.6% / 3.5%: llama.cpp quantizes activations too);
  base + adapter against the merged export, both f16: max <= 6% (W and W + BA rounded apart).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import pytest
import torch
from tokenizers import Regex, pre_tokenizers
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from lorakit.templates import ChatTemplate, leading_bos, resolve_template
from lorakit.export.gguf import export_gguf
from lorakit.export.gguf_adapter import export_adapter_gguf
from lorakit.export.merge import merged_model
from lorakit.cli import app
from lorakit.infer.generate import prompt_ids
from tests.conftest import ARCHITECTURES, arch_config, make_tokenizer, needs_embedded
from tests.export.llamacpp import LlamaCpp, hf_greedy, hf_logits, logit_gap, needs_llama_cpp, with_file_weights
from tests.export.spm import make_spm_tokenizer
from tests.conftest import write_jsonl
from tests.train.helpers import ROWS

pytestmark = needs_llama_cpp

# case: (architecture, tokenizer kind, chat format, end-of-turn token, config overrides)
CASES = {
    "llama-chatml": ("llama", "bpe", "chatml", "<|im_end|>", {}),
    "llama-3": ("llama", "bpe", "llama-3", "<|eot_id|>", {}),
    "tinyllama-spm": ("llama", "spm", "zephyr", "</s>", {}),
    # TinyLlama as transformers 5 loads it (Metaspace "first"): the GGUF's template starts with a space
    "tinyllama-spm-first": ("llama", "spm-first", "zephyr", "</s>", {}),
    "mistral-spm": ("mistral", "spm", "mistral", "</s>", {}),
    # as transformers 5 builds Llama-style tokenizers (Metaspace, prefix on the first stretch only)
    "mistral-spm-first": ("mistral", "spm-first", "mistral", "</s>", {}),
    # Phi-3's and Gemma's real tokenizers are SentencePiece-style too: Phi-3's as transformers 5 builds it,
    # Gemma's without a "▁" before the text
    "phi3-spm-first": ("phi3", "spm-first", "phi-3-mini", "<|end|>", {}),
    "gemma2-spm": ("gemma2", "spm-noprefix", "gemma", "<end_of_turn>", {"query_pre_attn_scalar": 8}),
    "qwen2": ("qwen2", "bpe", "chatml", "<|im_end|>", {}),
    "qwen3": ("qwen3", "bpe", "qwen3", "<|im_end|>", {}),
    "phi3": ("phi3", "bpe", "phi-3-mini", "<|end|>", {}),
    # real Gemma 2 checkpoints have query_pre_attn_scalar == head_dim; llama.cpp assumes it
    "gemma2": ("gemma2", "bpe", "gemma", "<end_of_turn>", {"query_pre_attn_scalar": 8}),
    # six layers: five sliding-window (rope base 10k), then one global (rope base 1M), as llama.cpp runs it
    "gemma3": ("gemma3_text", "bpe", "gemma", "<end_of_turn>", {"query_pre_attn_scalar": 8, "num_hidden_layers": 6}),
    # Falcon and BLOOM with their real tokenizers' pre-tokenizers (llama.cpp's "falcon" and "bloom")
    "falcon": ("falcon", "bpe", "falcon", "<|endoftext|>", {}),
    "bloom": ("bloom", "bpe", "bloom", "</s>", {}),
}
# Byte-level BPE families whose real tokenizer.json splits text otherwise than GPT-2's regex.
REAL_PRE_TOKENIZERS = {
    "falcon": pre_tokenizers.Sequence([
        pre_tokenizers.Punctuation(behavior="contiguous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split(Regex("[0-9][0-9][0-9]"), behavior="isolated", invert=False),
    ]),
    "bloom": pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(" ?[^(\\s|[.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c])]+"), behavior="isolated",
                             invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]),
}
# Text whose splitting differs between pre-tokenizers: digit runs, ASCII symbols, stops, other scripts.
TRICKY = ["Pay $1234567 + 89 <= 100^2 ~ `x|y` now!!", "It's 3.14... (¿no?) ½ ٢ 。，、 ۔ ،ok", "  two  spaces\n\ttab"]
PROMPTS = [
    [{"role": "user", "content": ROWS[0]["instruction"]}],  # trained: answers and stops
    [{"role": "user", "content": ROWS[1]["instruction"]}],
    [{"role": "user", "content": "Où vit Maria? Sie wohnt in Lisbon, über 34."}],  # characters training never saw
]
MAX_NEW = 12


@dataclass
class Family:
    case: str
    run: Path
    merged: torch.nn.Module
    tokenizer: object
    template: ChatTemplate
    end_id: int
    conversations: list
    prompts: list[list[int]]
    texts: list[str]
    folder: Path
    exports: dict = field(default_factory=dict)

    def export(self, qtype: str) -> Path:
        if qtype not in self.exports:
            self.exports[qtype], _ = export_gguf(self.run, self.folder / f"{self.case}-{qtype}.gguf", qtype)
        return self.exports[qtype]


def trained_family(case: str, run: Path, end: str, conversations: list, folder: Path) -> Family:
    """A trained run, merged, with its prompts rendered by the run's own template and tokenized."""
    merged, tokenizer, _ = merged_model(run)
    template = resolve_template(tokenizer, "auto")
    texts = [template.render(tokenizer, c, add_generation_prompt=True) for c in conversations]
    prompts = [prompt_ids(tokenizer, template, c) for c in conversations]  # training's, its BOS rule included
    return Family(case, run, merged, tokenizer, template, tokenizer.convert_tokens_to_ids(end), conversations, prompts,
                  texts, folder)


def cli_train(model: str | Path, tmp: Path, *overrides: str) -> Path:
    """``lorakit train`` on the test rows, in this process (typer's runner): the run folder."""
    from typer.testing import CliRunner

    sets = [f"model.name={model}", f"data.train={write_jsonl(tmp / 'train.jsonl', ROWS * 4)}",
            f"output_dir={tmp / 'run'}", "train.progress_bar=false", "lora.dropout=0", *overrides]
    result = CliRunner().invoke(app, ["train", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, (result.output, result.exception)
    return tmp / "run"


def gemma3_config(tokenizer, **sizes) -> Gemma3TextConfig:
    settings = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 8, "max_position_embeddings": 512, **sizes}
    return Gemma3TextConfig(vocab_size=len(tokenizer), initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **settings)


def _model_dir(folder: Path, arch: str, kind: str, fmt: str, sizes: dict) -> Path:
    if kind.startswith("spm"):
        tokenizer = make_spm_tokenizer(fmt, metaspace="first" if kind == "spm-first" else None,
                                       prefix=kind != "spm-noprefix")
    else:
        tokenizer = make_tokenizer(fmt, pre_tokenizer=REAL_PRE_TOKENIZERS.get(arch))
    torch.manual_seed(0)
    config = arch_config(arch, tokenizer, **sizes) if arch in ARCHITECTURES else gemma3_config(tokenizer, **sizes)
    # Embedding rows past the vocabulary, as real checkpoints have (Qwen2's tokenizer class also adds
    # <|endoftext|> to these test tokenizers when it loads them from a qwen2 folder: it needs a row).
    config.vocab_size = len(tokenizer) + 16
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        # config.pad_token_id makes the pad row a zero, frozen padding_idx row. Here pad == EOS, and for
        # chatml and zephyr EOS is the end-of-turn token: with tied embeddings its logit would stay 0 and
        # the model could never learn to stop. A real checkpoint's row is trained; make this one random.
        model.get_input_embeddings().weight[tokenizer.pad_token_id].normal_(std=0.3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=list(CASES))
def family(request, tmp_path_factory) -> Family:
    case = request.param
    arch, kind, fmt, end, sizes = CASES[case]
    tmp = tmp_path_factory.mktemp(case)
    model_dir = _model_dir(tmp / "model", arch, kind, fmt, sizes)
    run = cli_train(model_dir, tmp, "train.max_steps=40", "train.batch_size=4", "train.learning_rate=0.02",
                    "lora.rank=4", "train.save_steps=null", "train.logging_steps=100", "train.warmup=0")
    return trained_family(case, run, end, PROMPTS, tmp)


def test_f16_tokenizes_generates_and_stops_like_transformers(family):
    llm = LlamaCpp(family.export("f16"))
    try:
        meta = llm.metadata()
        assert int(meta["tokenizer.ggml.eot_token_id"]) == family.end_id
        assert llm.is_end(family.end_id)
        lead = " " if family.case == "tinyllama-spm-first" else ""
        for conversation, text, ids in zip(family.conversations, family.texts, family.prompts):
            chat = llm.chat_prompt(conversation)  # the GGUF's chat template, rendered by llama.cpp's formatter
            assert chat == lead + text
            assert llm.chat_prompt_ids(conversation) == ids, chat  # what llama-server feeds the model
            if not lead:  # with a lead, a raw prompt must start with it, as the GGUF's template writes it
                raw = llm.tokenize(text)  # the rendered text as llama.cpp splits it, nothing added
                assert leading_bos(family.tokenizer, raw) + raw == ids, text
        for text in TRICKY:  # inside a prompt, where the text stands in use
            conversation = [{"role": "user", "content": text}]
            want = prompt_ids(family.tokenizer, family.template, conversation)
            assert llm.chat_prompt_ids(conversation) == want, text
        answers = [hf_greedy(family.merged, ids, MAX_NEW, family.template.end_token_ids) for ids in family.prompts]
        # the trained prompt is answered and closed by the end-of-turn token: what stopping is checked on
        assert answers[0][-1] == family.end_id and len(answers[0]) > 1, family.tokenizer.decode(answers[0])
        for ids, want in zip(family.prompts, answers):
            assert llm.greedy(ids, MAX_NEW) == want
            mean, worst, _ = logit_gap(llm.logits(ids + want), hf_logits(family.merged, ids + want))
            print(family.case, "f16", mean, worst)
            assert worst <= 0.04, worst  # f16 rounding only: a wrong rope base or norm shows at once
    finally:
        llm.close()


@pytest.mark.parametrize("qtype", ["bf16", "q8_0"])
def test_bf16_and_q8_0_logits_within_tolerance(family, qtype):
    path = family.export(qtype)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType[qtype.upper()]
    llm = LlamaCpp(path)
    stored = with_file_weights(family.merged, qtype)
    try:
        for ids in family.prompts:
            seq = ids + hf_greedy(family.merged, ids, MAX_NEW, family.template.end_token_ids)
            got = llm.logits(seq)
            mean, worst, pick = logit_gap(got, hf_logits(stored, seq))
            print(family.case, qtype, "stored", mean, worst, pick)
            assert mean <= 0.01 and worst <= 0.12 and pick <= 0.10, ("against the stored weights", mean, worst, pick)
            mean, worst, pick = logit_gap(got, hf_logits(family.merged, seq))
            print(family.case, qtype, "float32", mean, worst, pick)
            assert mean <= 0.02, ("against float32", mean, worst, pick)
    finally:
        llm.close()


def test_adapter_on_base_equals_the_merged_export(family):
    adapter = family.folder / f"{family.case}-adapter.gguf"
    _, modelfile, base = export_adapter_gguf(family.run, adapter, "f16", with_base=True)
    reader = gguf.GGUFReader(adapter)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 32.0
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_output.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names
    text = modelfile.read_text()
    assert f"\nFROM ./{base.name}\nADAPTER ./{adapter.name}\n" in text
    merged, on_base, plain = LlamaCpp(family.export("f16")), LlamaCpp(base, lora=adapter), LlamaCpp(base)
    try:
        for ids in family.prompts:
            want = merged.greedy(ids, MAX_NEW)
            assert on_base.greedy(ids, MAX_NEW) == want
            mean, worst, _ = logit_gap(on_base.logits(ids), merged.logits(ids))
            print(family.case, "adapter", mean, worst)
            assert worst <= 0.06, worst
        # the adapter is what makes the difference: the base alone answers otherwise
        base_gap = logit_gap(plain.logits(family.prompts[0]), merged.logits(family.prompts[0]))[1]
        assert base_gap > 0.05, base_gap
    finally:
        for llm in (merged, on_base, plain):
            llm.close()


# --- the embedded SmolLM2-135M-Instruct, trained a few steps ---------------------------------

SMOL_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 12 + 30?"}],
    [{"role": "user", "content": "Say the city of Maria."}],
]
SMOL_NEW = 24


@pytest.fixture(scope="module")
def smol(tmp_path_factory, embedded_cache):
    tmp = tmp_path_factory.mktemp("smol")
    run = cli_train("smollm2-135m-instruct", tmp, "train.max_steps=3", "train.batch_size=2", "lora.rank=4",
                    "train.save_steps=null", f"model.cache_dir={embedded_cache}", "train.learning_rate=1e-3")
    return trained_family("smollm2", run, "<|im_end|>", SMOL_PROMPTS, tmp)


@pytest.mark.slow
@needs_embedded
def test_smollm2_judged_by_llama_cpp(smol):
    f16 = LlamaCpp(smol.export("f16"), n_ctx=512)
    try:
        assert f16.metadata()["tokenizer.ggml.pre"] == "smollm"
        answers = []
        for text, ids in zip(smol.texts, smol.prompts):
            assert f16.tokenize(text) == ids
            want = hf_greedy(smol.merged, ids, SMOL_NEW, smol.template.end_token_ids)
            assert f16.greedy(ids, SMOL_NEW) == want, smol.tokenizer.decode(want)
            answers.append(want)
        assert answers[0][-1] == smol.end_id and "Paris" in smol.tokenizer.decode(answers[0])
    finally:
        f16.close()
    q8 = LlamaCpp(smol.export("q8_0"), n_ctx=512)
    try:
        for ids, answer in zip(smol.prompts, answers):
            # most of the gap is llama.cpp quantizing activations too: against the stored weights it is as large
            mean, worst, pick = logit_gap(q8.logits(ids + answer), hf_logits(smol.merged, ids + answer))
            print("smollm2 q8_0 float32", mean, worst, pick)
            assert mean <= 0.02 and worst <= 0.12 and pick <= 0.10, (mean, worst, pick)
    finally:
        q8.close()
    q4 = LlamaCpp(smol.export("q4_k_m"), n_ctx=512)
    try:  # llama.cpp's own Q4_K_M mix of the merged model still knows the capital
        answer = q4.greedy(smol.prompts[0], SMOL_NEW)
        assert answer[-1] == smol.end_id and "Paris" in smol.tokenizer.decode(answer)
        mean, worst, pick = logit_gap(q4.logits(smol.prompts[0]), hf_logits(smol.merged, smol.prompts[0]))
        print("smollm2 q4_k_m float32", mean, worst, pick)
        assert mean <= 0.05, (mean, worst, pick)
    finally:
        q4.close()
    adapter = smol.folder / "smol-adapter.gguf"
    _, _, base = export_adapter_gguf(smol.run, adapter, "f16", with_base=True)
    merged, on_base = LlamaCpp(smol.export("f16"), n_ctx=512), LlamaCpp(base, lora=adapter, n_ctx=512)
    try:
        for ids in smol.prompts:
            assert on_base.greedy(ids, SMOL_NEW) == merged.greedy(ids, SMOL_NEW)
    finally:
        merged.close()
        on_base.close()
    sizes = {p.name: p.stat().st_size for p in smol.folder.glob("*.gguf")}
    print("SmolLM2 GGUF sizes (bytes):", sizes)


# --- k-quants, made by llama.cpp's own quantizer ------------------------------------------------

@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Family:
    """A Llama whose rows are multiples of 256 (k-quants' block): hidden 256, MLP 512."""
    tmp = tmp_path_factory.mktemp("wide")
    model_dir = _model_dir(tmp / "model", "llama", "bpe", "chatml", {"hidden_size": 256, "intermediate_size": 512})
    run = cli_train(model_dir, tmp, "train.max_steps=40", "train.batch_size=4", "train.learning_rate=0.02",
                    "lora.rank=4", "train.save_steps=null", "train.logging_steps=100", "train.warmup=0")
    return trained_family("wide", run, "<|im_end|>", PROMPTS, tmp)


# qtype: (a GGML type the file must hold, the largest mean |logit gap| against float32). Measured on this
# model with its weights of std 0.3, over two trainings: q4_k_m 3.3-5.4%, q6_k 1.3-2.3% (q8_0: 0.4-0.8%).
K_QUANT_CASES = {"q4_k_m": ("Q4_K", 0.07), "q6_k": ("Q6_K", 0.03)}


@pytest.mark.parametrize("qtype", list(K_QUANT_CASES))
def test_k_quants_made_by_llama_cpp_answer_the_trained_prompt(wide, qtype):
    kind, mean_limit = K_QUANT_CASES[qtype]
    path = wide.export(qtype)
    types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert kind in types, types
    assert path.stat().st_size < wide.export("q8_0").stat().st_size
    llm = LlamaCpp(path)
    try:
        ids = wide.prompts[0]
        want = hf_greedy(wide.merged, ids, MAX_NEW, wide.template.end_token_ids)
        assert want[-1] == wide.end_id
        # The trained answer starts as transformers' does and stops. Token for token equality is not asked
        # of 4-bit rounding of these random weights (std 0.3): it once added a token before the stop.
        got = llm.greedy(ids, MAX_NEW)
        assert got[0] == want[0] and got[-1] == wide.end_id, (got, want)
        for ids in wide.prompts:
            mean, worst, pick = logit_gap(llm.logits(ids), hf_logits(wide.merged, ids))
            print("wide", qtype, mean, worst, pick)
            assert mean <= mean_limit, (mean, worst, pick)
    finally:
        llm.close()
