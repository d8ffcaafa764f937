"""Masking with SentencePiece-style (Llama 2) tokenizers: Metaspace words, byte fallback, BOS added by the tokenizer.

TinyLlama-Chat and Phi-3-mini ship such tokenizers; the byte-level BPE ones of the other tests
split text differently (no "▁" word marks, so no leading-space ambiguity at turn boundaries).
"""

from __future__ import annotations

from lorakit.data.encode import IGNORE_INDEX, encode_conversation
from lorakit.templates import resolve_template
from tests.data.test_encode import MULTI_TURN, check_masking
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
    # The zephyr template writes no BOS and lorakit adds none (as apply_chat_template does).
    assert enc.input_ids.count(tokenizer.bos_token_id) <= 1


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
