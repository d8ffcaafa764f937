"""Reading files into samples: shapes, counts, and errors that name the record."""

from __future__ import annotations

import pytest

from lorakit.data.dataset import encode_samples, read_conversations
from lorakit.data.sources import DataError
from lorakit.data.templates import resolve_template
from tests.conftest import make_tokenizer, write_jsonl


def test_alpaca_and_messages_files(tmp_path):
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Hi", "input": "there", "output": "Hello"}])
    chat = tmp_path / "m.json"
    chat.write_text(
        '[{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},'
        ' {"role": "assistant", "content": "A"}]},'
        ' {"conversations": [{"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]}]',
        encoding="utf-8",
    )
    samples = read_conversations([alpaca, chat], "auto", system_prompt="Be kind.")
    assert [s.conversation for s in samples] == [
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi\n\nthere"},
         {"role": "assistant", "content": "Hello"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Q2"},
         {"role": "assistant", "content": "A2"}],
    ]
    assert samples[0].origin.endswith("a.jsonl, line 1") and samples[2].origin.endswith("m.json, record 1")


def test_drops_are_counted_with_their_origin(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Hi", "output": "Hello"},
        {"instruction": "Hi", "output": ""},
        {"instruction": "Long " * 200, "output": "x"},
    ])
    tokenizer = make_tokenizer("chatml")
    encoded, report = encode_samples(
        read_conversations([path], "auto", None), tokenizer, resolve_template(tokenizer, "auto"),
        max_length=64, truncation="drop", train_on="all_assistant", split="train",
    )
    assert len(encoded) == report.kept == 1 and report.read == 3
    assert report.dropped == {"empty assistant answer": 1, "longer than max_length=64": 1}
    assert report.examples["empty assistant answer"] == [f"{path}, line 2"]
    assert any("dropped 1: longer than max_length=64" in line for line in report.lines())


@pytest.mark.parametrize(
    "content,expected",
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', "line 2: not valid JSON"),
        ('{"instruction": "a"}\n', "line 1: missing required field 'output'"),
        ('{"instruction": "a", "output": 3}\n', "line 1: field 'output' must be a string"),
        ('{"messages": [{"role": "wizard", "content": "x"}]}\n', "unknown role 'wizard'"),
        ('{"question": "a"}\n', "line 1: cannot tell the data shape"),
        ("", "is empty"),
    ],
)
def test_bad_input_names_the_line(tmp_path, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_conversations([path], "auto", None)
    assert expected in str(info.value) and "bad.jsonl" in str(info.value)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"instruction": "caf\u00e9", "output": "x"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_conversations([path], "auto", None)
