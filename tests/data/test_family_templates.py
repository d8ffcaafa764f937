"""Chat formats of the model families: labels, think blocks, and templates that close with EOS."""

from __future__ import annotations

import pytest

from lorakit.data.encode import IGNORE_INDEX, encode_conversation
from lorakit.templates import TemplateError, resolve_template
from tests.conftest import make_tokenizer
from tests.data.test_encode import MULTI_TURN, check_masking

NO_SYSTEM = MULTI_TURN[1:]  # Mistral's format has no system turn

# format: (end-of-turn token, text the template puts between the turn's header and the answer)
FORMATS = {
    "zephyr": ("</s>", ""),
    "phi-3-mini": ("<|end|>", ""),
    "mistral": ("</s>", ""),
    "gemma": ("<end_of_turn>", ""),
    "falcon": ("<|endoftext|>", " "),
    "bloom": ("</s>", " "),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_answer_of_a_conversation_trains_with_its_end_token(fmt):
    tokenizer = make_tokenizer(fmt)
    end, lead = FORMATS[fmt]
    template = resolve_template(tokenizer, "auto")
    assert tokenizer.convert_tokens_to_ids(end) in template.end_token_ids
    check_masking(tokenizer, template, NO_SYSTEM, end, lead=lead)


def test_phi3_eos_after_the_last_turn_is_not_trained():
    tokenizer = make_tokenizer("phi-3-mini")
    template = resolve_template(tokenizer, "auto")
    assert template.render(tokenizer, NO_SYSTEM, add_generation_prompt=False).endswith("<|end|>\n<|endoftext|>")
    enc = check_masking(tokenizer, template, NO_SYSTEM, "<|end|>")
    assert enc.input_ids[-1] == tokenizer.eos_token_id and enc.labels[-1] == IGNORE_INDEX
    assert enc.input_ids.count(tokenizer.bos_token_id) == 1  # the template writes BOS; nothing adds another


QUESTION = [{"role": "user", "content": "Say the city of Maria."}]


def _labels(tokenizer, template, conv) -> str:
    enc = encode_conversation(tokenizer, template, conv, 4096)
    return tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX], skip_special_tokens=False)


def test_qwen3_think_keep_trains_the_empty_block_and_strip_empty_removes_it():
    tokenizer = make_tokenizer("qwen3")
    conv = [*QUESTION, {"role": "assistant", "content": "Lisbon"}]
    keep = resolve_template(tokenizer, "auto", "keep")
    strip = resolve_template(tokenizer, "auto", "strip_empty")
    kept = "<|im_start|>assistant\n<think>\n\n</think>\n\nLisbon<|im_end|>\n"
    assert keep.render(tokenizer, conv, False).endswith(kept)
    assert strip.render(tokenizer, conv, False).endswith("<|im_start|>assistant\nLisbon<|im_end|>\n")
    assert _labels(tokenizer, keep, conv) == "<think>\n\n</think>\n\nLisbon<|im_end|>"
    assert _labels(tokenizer, strip, conv) == "Lisbon<|im_end|>"
    # the prompt the model answers is the same either way, and it stops at <|im_end|> either way
    assert keep.render(tokenizer, QUESTION, True) == strip.render(tokenizer, QUESTION, True)
    assert keep.render(tokenizer, QUESTION, True).endswith("<|im_start|>assistant\n")
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in keep.end_token_ids and end in strip.end_token_ids


def test_qwen3_reasoning_is_kept_by_both_choices():
    tokenizer = make_tokenizer("qwen3")
    conv = [*QUESTION, {"role": "assistant", "content": "<think>\nMaria lives in Lisbon.\n</think>\n\nLisbon"}]
    expected = "<think>\nMaria lives in Lisbon.\n</think>\n\nLisbon<|im_end|>"
    for think in ("keep", "strip_empty"):
        assert _labels(tokenizer, resolve_template(tokenizer, "auto", think), conv) == expected


def test_qwen3_multi_turn_needs_strip_empty():
    tokenizer = make_tokenizer("qwen3")
    # The template writes the think block only after the last user turn, so with it kept the
    # conversation does not grow as a prefix and earlier answers cannot be located.
    with pytest.raises(TemplateError, match="growing prefix"):
        encode_conversation(tokenizer, resolve_template(tokenizer, "auto", "keep"), NO_SYSTEM, 4096)
    check_masking(tokenizer, resolve_template(tokenizer, "auto", "strip_empty"), MULTI_TURN, "<|im_end|>")


def test_unknown_think_choice_is_refused():
    with pytest.raises(TemplateError, match="data.think"):
        resolve_template(make_tokenizer("qwen3"), "auto", "drop")


def test_a_template_that_refuses_a_system_turn_names_the_sample(tmp_path):
    # Gemma's and Mistral's own templates raise on a system turn; the user needs the line and a way out.
    from lorakit.config import DataConfig
    from lorakit.data.pipeline import build_splits
    from lorakit.data.records import DataError
    from tests.conftest import write_jsonl

    tokenizer = make_tokenizer("gemma")
    tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + tokenizer.chat_template
    )
    path = write_jsonl(tmp_path / "g.jsonl", [{"instruction": "Hi", "output": "Hello"}])
    template = resolve_template(tokenizer, "auto")
    with pytest.raises(DataError, match=r"g\.jsonl, line 1: the chat template .* refused a conversation with roles "
                                        r"system/user/assistant: System role not supported\. .*data\.system_prompt"):
        build_splits(DataConfig(train=[str(path)], system_prompt="Be brief.", cache_dir=None), tokenizer, template)
    assert len(build_splits(DataConfig(train=[str(path)], cache_dir=None), tokenizer, template).train) == 1
