"""Masking with SentencePiece-style (Llama 2) tokenizers: Metaspace words, byte fallback, BOS added by the tokenizer.

TinyLlama-Chat and Phi-3-mini ship such tokenizers; the byte-level BPE ones of the other tests
split text differently (no "▁" word marks, so no leading-space ambiguity at turn boundaries).
"""

from __future__ import annotations

import pytest

from lorakit.data.encode import IGNORE_INDEX, encode_conversation, encode_prompt
from lorakit.infer.generate import prompt_ids
from lorakit.templates import adds_bos, resolve_template
from tests.conftest import make_tokenizer
from tests.data.test_encode import MULTI_TURN, check_masking
from tests.export.spm import make_spm_tokenizer
from tests.seedrepos import MODELS, sentencepiece_tokenizer

NO_SYSTEM = MULTI_TURN[1:]


def _tokenizer(repo_id: str):
    _, spec, _ = MODELS[repo_id]
    return sentencepiece_tokenizer(*spec[1:])


def test_tinyllama_zephyr_trains_each_answer_with_its_eos():
    tokenizer = _tokenizer("TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    template = resolve_template(tokenizer, "auto")
    assert template.end_token_ids == {tokenizer.eos_token_id}
    enc = check_masking(tokenizer, template, MULTI_TURN, "</s>")
    # The zephyr template writes no BOS; the tokenizer puts one before plain text, and so do llama.cpp and ollama
    # (the GGUF says add_bos_token): training starts with it too, once, and never trains on it.
    assert enc.input_ids[0] == tokenizer.bos_token_id and enc.labels[0] == IGNORE_INDEX
    assert enc.input_ids.count(tokenizer.bos_token_id) == 1


def test_phi3_sentencepiece_trains_up_to_end_not_the_final_eos():
    tokenizer = _tokenizer("microsoft/Phi-3-mini-4k-instruct")
    template = resolve_template(tokenizer, "auto")
    enc = check_masking(tokenizer, template, NO_SYSTEM, "<|end|>")
    assert enc.input_ids[-1] == tokenizer.eos_token_id and enc.labels[-1] == IGNORE_INDEX
    assert enc.input_ids.count(tokenizer.bos_token_id) == 1  # the template writes BOS; nothing adds another


def test_non_ascii_answers_survive_byte_fallback():
    tokenizer = _tokenizer("TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    conv = [{"role": "user", "content": "Say hello in Chinese."}, {"role": "assistant", "content": "你好，世界"}]
    enc = encode_conversation(tokenizer, resolve_template(tokenizer, "auto"), conv, 4096)
    trained = tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX], skip_special_tokens=False)
    assert trained == "你好，世界</s>"
    assert any(tokenizer.convert_ids_to_tokens(t).startswith("<0x") for t in enc.input_ids)


@pytest.mark.parametrize("template", ["auto", "alpaca", "human-assistant"])
@pytest.mark.parametrize("metaspace", [None, "first"])
def test_a_template_without_bos_gets_the_tokenizers_bos_on_every_path(template, metaspace):
    """Zephyr, or a plain template on a Llama-style base: training, encode_prompt and prompt_ids (what chat,
    generate, serve and eval build) all start with the one BOS the tokenizer puts before plain text."""
    tokenizer = make_spm_tokenizer("zephyr", metaspace=metaspace)
    chat = resolve_template(tokenizer, template)
    assert adds_bos(tokenizer) and not chat.render(tokenizer, NO_SYSTEM, False).startswith(tokenizer.bos_token)
    enc = check_masking(tokenizer, chat, NO_SYSTEM, tokenizer.eos_token)
    bos = tokenizer.bos_token_id
    assert enc.input_ids[0] == bos and enc.input_ids.count(bos) == 1 and enc.labels[0] == IGNORE_INDEX
    # the rest is the rendering tokenized as it stands: the BOS is put before it, not parsed into it
    text = chat.render(tokenizer, NO_SYSTEM, False)
    assert enc.input_ids[1:] == tokenizer(text, add_special_tokens=False)["input_ids"]
    # each prompt path builds the ids training had before the answer
    turns = NO_SYSTEM[:1]
    trained = encode_conversation(tokenizer, chat, NO_SYSTEM[:2], 4096)
    before = trained.input_ids[: next(k for k, label in enumerate(trained.labels) if label != IGNORE_INDEX)]
    assert prompt_ids(tokenizer, chat, turns) == before == encode_prompt(tokenizer, chat, turns, 4096).input_ids


@pytest.mark.parametrize("family", ["mistral", "phi-3-mini", "gemma"])
def test_a_template_that_writes_bos_gets_no_second_one(family):
    """Llama-2/Mistral-style templates write ``{{ bos_token }}``; the tokenizer's BOS is not put before it again."""
    tokenizer = make_spm_tokenizer(family, prefix=family != "gemma")
    chat = resolve_template(tokenizer, "auto")
    turns = [{"role": "user", "content": "Where does Maria live?"}, {"role": "assistant", "content": "In Lisbon."}]
    enc = encode_conversation(tokenizer, chat, turns, 4096)
    bos = tokenizer.bos_token_id
    assert adds_bos(tokenizer) and enc.input_ids[0] == bos and enc.input_ids.count(bos) == 1
    assert prompt_ids(tokenizer, chat, turns[:1]).count(bos) == 1


def test_a_tokenizer_without_bos_gets_none():
    """Byte-level BPE tokenizers (SmolLM2, Qwen) put nothing before plain text: neither does lorakit."""
    tokenizer = make_tokenizer("chatml")
    chat = resolve_template(tokenizer, "auto")
    text = chat.render(tokenizer, NO_SYSTEM, False)
    assert not adds_bos(tokenizer)
    assert encode_conversation(tokenizer, chat, NO_SYSTEM, 4096).input_ids == tokenizer(text)["input_ids"]
