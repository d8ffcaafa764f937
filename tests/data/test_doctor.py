"""The data doctor finds each common mistake, and stays quiet when there is none."""

from __future__ import annotations

import pytest
import torch
from tokenizers import processors

from lorakit.config import DataConfig
from lorakit.data import doctor
from lorakit.data.encode import IGNORE_INDEX
from lorakit.data.pipeline import build_splits
from lorakit.templates import resolve_template
from tests.conftest import make_tokenizer, write_jsonl

QA = [{"instruction": "What is two plus two?", "output": "It is four."}]


def findings(tmp_path, rows, tokenizer, template="auto", **cfg) -> dict:
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = DataConfig(train=[str(path)], template=template, **cfg)
    splits = build_splits(data, tokenizer, resolve_template(tokenizer, template), require_samples=False)
    return {f.code: f for f in splits.reports[0].findings}


def template_file(tmp_path, name: str, jinja: str) -> str:
    path = tmp_path / f"{name}.jinja"
    path.write_text(jinja, encoding="utf-8")
    return str(path)


def test_clean_setup_has_only_the_pad_note(tmp_path):
    tokenizer = make_tokenizer("chatml")
    assert set(findings(tmp_path, QA, tokenizer)) == {"pad_is_eos"}
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    assert findings(tmp_path, QA, tokenizer) == {}


def test_no_loss_tokens(tmp_path):
    tokenizer = make_tokenizer("chatml")
    deaf = template_file(tmp_path, "deaf", "{% for m in messages %}{% if m['role'] != 'assistant' %}"
                         "{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
    found = findings(tmp_path, QA * 2, tokenizer, template=deaf)["no_loss_tokens"]
    assert found.count == 2 and sorted(e[-6:] for e in found.examples) == ["line 1", "line 2"]


def test_doubled_bos(tmp_path):
    tokenizer = make_tokenizer("llama-3")
    bos = tokenizer.bos_token
    # A tokenizer that adds BOS itself, as Llama's does, and text that already starts with it.
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    rows = [{"text": f"{bos}The quick brown fox."}, {"text": "The lazy dog."}]
    found = findings(tmp_path, rows, tokenizer)["doubled_bos"]
    assert found.level == "error" and found.count == 1 and found.examples == [f"{tmp_path / 'd.jsonl'}, line 1"]


def test_template_and_tokenizer_bos_are_not_doubled(tmp_path):
    tokenizer = make_tokenizer("llama-3")  # its template writes BOS ...
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(  # ... and so does the tokenizer
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    path = write_jsonl(tmp_path / "d.jsonl", QA)
    splits = build_splits(DataConfig(train=[str(path)]), tokenizer, resolve_template(tokenizer, "auto"))
    assert splits.train[0].input_ids[:2] == [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<|start_header_id|>")]
    assert "doubled_bos" not in {f.code for f in splits.reports[0].findings}


def test_end_token_cut_by_truncation(tmp_path):
    tokenizer = make_tokenizer("chatml")
    rows = [{"instruction": "Hi", "output": "word " * 40}]
    found = findings(tmp_path, rows, tokenizer, truncation="cut", max_length=40)["end_token_cut"]
    assert found.count == 1 and "data.max_length" in found.message


def test_template_without_end_token_as_label(tmp_path):
    tokenizer = make_tokenizer("chatml")
    open_ended = template_file(tmp_path, "open", "{% for m in messages %}{{ m['role'] + ':\\n' + m['content'] + '\\n' }}"
                               "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}")
    found = findings(tmp_path, QA, tokenizer, template=open_ended)["no_end_label"]
    assert found.level == "error" and found.count == 1 and "'open'" in found.message


def test_instruct_model_without_its_template(tmp_path):
    tokenizer = make_tokenizer("chatml")
    assert "instruct_without_template" in findings(tmp_path, QA, tokenizer, template="alpaca")
    assert "instruct_without_template" not in findings(tmp_path, QA, tokenizer, template="chatml")  # same text
    assert "text_on_instruct_model" in findings(tmp_path, [{"text": "Plain words."}], tokenizer)
    base = make_tokenizer("chatml", with_template=False)
    assert set(findings(tmp_path, QA, base)) == {"base_model_template", "pad_is_eos"}


THINKING = (
    "{%- set ns = namespace(last=-1) -%}"
    "{%- for m in messages %}{% if m['role'] == 'user' %}{% set ns.last = loop.index0 %}{% endif %}{% endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' and loop.index0 > ns.last -%}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif -%}"
)


def test_thinking_template_with_empty_think_blocks(tmp_path):
    tokenizer = make_tokenizer("chatml")
    tokenizer.chat_template = THINKING
    assert "empty_think_block" in findings(tmp_path, QA, tokenizer)
    # It rewrites earlier turns, so only the last answer can be located; the error says so.
    multi = [{"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                           {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]}]
    with pytest.raises(ValueError, match=r"d.jsonl, line 1: .*growing prefix.*data.train_on=last_assistant"):
        findings(tmp_path, multi, tokenizer)
    assert "empty_think_block" in findings(tmp_path, multi, tokenizer, train_on="last_assistant")


def test_pad_equal_to_eos_is_checked_against_the_collator(tmp_path, monkeypatch):
    tokenizer = make_tokenizer("chatml")
    note = findings(tmp_path, QA * 2, tokenizer)["pad_is_eos"]
    assert note.level == "note" and "kept all 2 EOS labels" in note.message

    class MasksByPadId(doctor.PadCollator):
        """The classic recipe bug: labels of every pad-id token set to -100 after padding."""

        def __call__(self, batch):
            out = super().__call__(batch)
            out["labels"] = torch.where(out["input_ids"] == self.pad_token_id, IGNORE_INDEX, out["labels"])
            return out

    monkeypatch.setattr(doctor, "PadCollator", MasksByPadId)
    error = findings(tmp_path, QA * 2, tokenizer)["pad_masks_eos"]
    assert error.level == "error" and "removed 2 EOS labels" in error.message
