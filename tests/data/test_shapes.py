"""Each shape becomes the conversation it means; columns can be mapped; detection is by columns."""

from __future__ import annotations

import pytest

from lorakit.data.records import DataError, Record
from lorakit.data.shapes import detect_shape, to_content


def rec(**fields) -> Record:
    return Record(fields, "f.jsonl", "line 7")


def U(text):  # noqa: N802 - short builders keep the expected conversations readable
    return {"role": "user", "content": text}


def A(text):  # noqa: N802
    return {"role": "assistant", "content": text}


def S(text):  # noqa: N802
    return {"role": "system", "content": text}


@pytest.mark.parametrize(
    "record,shape,expected",
    [
        (rec(instruction="Translate", input="Hi", output="Salut"), "alpaca", [U("Translate\n\nHi"), A("Salut")]),
        (
            rec(instruction="And now?", input="", output="C", system="Be brief.",
                history=[["First?", "A"], ["Second?", "B"]]),
            "alpaca",
            [S("Be brief."), U("First?"), A("A"), U("Second?"), A("B"), U("And now?"), A("C")],
        ),
        (rec(instruction="Summarize", context="Long text", response="Short", category="summarization"), "dolly",
         [U("Summarize\n\nLong text"), A("Short")]),
        (rec(instruction="Name a colour", context="", response="Red"), "dolly", [U("Name a colour"), A("Red")]),
        (rec(prompt="2+2=", completion="4"), "prompt_completion", [U("2+2="), A("4")]),
        (
            rec(prompt=[{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
                completion=[{"role": "assistant", "content": "A"}]),
            "prompt_completion",
            [S("S"), U("Q"), A("A")],
        ),
        (rec(text="Once upon a time."), "text", "Once upon a time."),
        (
            rec(conversations=[{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                               {"from": "gpt", "value": "A"}]),
            "messages",
            [S("S"), U("Q"), A("A")],
        ),
        (
            rec(system="From the record", conversations=[{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]),
            "messages",
            [S("From the record"), U("Q"), A("A")],
        ),
        (
            rec(messages=[{"role": "user", "content": [{"type": "text", "text": "Q"}, {"type": "text", "text": "!"}]},
                          {"role": "assistant", "content": "A"}]),
            "messages",
            [U("Q!"), A("A")],
        ),
    ],
)
def test_each_shape(record, shape, expected):
    assert detect_shape(record.fields) == shape
    assert to_content(record, shape, None) == expected


def test_default_system_prompt_only_where_there_is_none():
    assert to_content(rec(prompt="Q", completion="A"), "prompt_completion", "Default")[0] == S("Default")
    own = rec(messages=[S("Own"), U("Q"), A("A")])
    assert to_content(own, "messages", "Default")[0] == S("Own")
    assert to_content(rec(instruction="Q", output="A", system="Row"), "alpaca", "Default")[0] == S("Row")


def test_column_mapping():
    record = rec(sentence="Hello", translation_extra="Bonjour", note="x")
    columns = {"prompt": "sentence", "completion": "translation_extra"}
    assert detect_shape(record.fields, columns) == "prompt_completion"
    assert to_content(record, "prompt_completion", None, columns) == [U("Hello"), A("Bonjour")]
    turns = rec(dialog=[{"speaker": "human", "words": "Q"}, {"speaker": "bot", "words": "A"}])
    mapping = {"messages": "dialog", "role": "speaker", "content": "words"}
    assert to_content(turns, detect_shape(turns.fields, mapping), None, mapping) == [U("Q"), A("A")]


def test_missing_mapped_column_names_both_names():
    with pytest.raises(DataError) as info:
        to_content(rec(sentence="Hello"), "prompt_completion", None, {"prompt": "sentence", "completion": "target"})
    assert "f.jsonl, line 7: missing required field 'target' (data.columns.completion)" in str(info.value)


def test_undetectable_columns_suggest_the_fix():
    with pytest.raises(DataError, match=r"cannot tell the data shape from the columns \['answer', 'question'\].*data.columns"):
        detect_shape({"question": "q", "answer": "a"})


@pytest.mark.parametrize(
    "record,shape,expected",
    [
        (rec(instruction="Q", output="A", history=[["only one"]]), "alpaca", "history item 0 must be a [question, answer] pair"),
        (rec(instruction="Q", output="A", history="no"), "alpaca", "'history' must be a list"),
        (rec(instruction="Q", response=5), "dolly", "field 'response' must be a string, got int"),
        (rec(messages=[]), "messages", "'messages' must be a non-empty list of turns"),
        (rec(messages=[{"role": "tool", "content": "x"}]), "messages", "turn 0 has unknown role 'tool'"),
        (rec(messages=[{"role": "user", "content": None}]), "messages", "turn 0 content must be a string"),
        (rec(messages=["hi"]), "messages", "turn 0 of 'messages' must be an object"),
        (rec(text=["a"]), "text", "field 'text' must be a string, got list"),
    ],
)
def test_bad_records_name_the_line(record, shape, expected):
    with pytest.raises(DataError) as info:
        to_content(record, shape, None)
    assert str(info.value).startswith("f.jsonl, line 7: ") and expected in str(info.value)
