"""Prompt files for batch generation: JSONL and CSV, prompts or message lists, errors that name the line."""

from __future__ import annotations

import json

import pytest

from lorakit.data.records import DataError
from lorakit.infer.prompts import read_prompts
from tests.conftest import write_jsonl


def test_jsonl_shapes_become_conversations_ending_in_a_user_turn(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Hi"},
        {"instruction": "Translate.", "input": "Good morning"},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "reference"}]},
    ])
    items = read_prompts(path, system_prompt="Be brief.")
    assert [i.conversation for i in items] == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Translate.\n\nGood morning"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}],
    ]
    assert items[2].origin.endswith("p.jsonl, line 3")


def test_csv_with_prompt_and_message_columns(tmp_path):
    messages = json.dumps([{"role": "user", "content": "Hello, there"}])
    csv_text = 'prompt,messages\n"What is 2, plus 2?",\n,"' + messages.replace('"', '""') + '"\n'
    path = tmp_path / "p.csv"
    path.write_text(csv_text, encoding="utf-8")
    items = read_prompts(path)
    assert [i.conversation for i in items] == [
        [{"role": "user", "content": "What is 2, plus 2?"}],
        [{"role": "user", "content": "Hello, there"}],
    ]
    assert items[1].origin.endswith("p.csv, line 3")


def test_bad_prompt_records_name_their_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('messages\n"[{""role"": ""user"", ""content"": ""ok""}]"\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv, line 3: column 'messages' is not a JSON list"):
        read_prompts(path)
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"text": "no prompt here"}])
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: expected a non-empty 'prompt'"):
        read_prompts(path)
    path = write_jsonl(tmp_path / "ends.jsonl", [{"messages": [{"role": "system", "content": "s"}]}])
    with pytest.raises(DataError, match="line 1: the conversation must end with a user turn"):
        read_prompts(path)


def test_a_message_cell_nested_too_deeply_names_its_line(tmp_path):
    path = tmp_path / "deep.csv"
    path.write_text("messages\n" + "[" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"deep.csv, line 2: column 'messages' is not a JSON list of turns: "
                                        r"JSON nested too deeply to read \(100,000 levels"):
        read_prompts(path)


def test_prompts_take_every_training_shape_and_data_columns(tmp_path):
    path = write_jsonl(tmp_path / "mapped.jsonl", [
        {"question": "Capital of France?", "answer": "Paris"},
        {"instruction": "Summarize.", "context": "A long text.", "response": "Short."},
    ])
    items = read_prompts(path, columns={"prompt": "question", "completion": "answer"})
    assert [i.conversation for i in items] == [
        [{"role": "user", "content": "Capital of France?"}],  # the reference answer is what is asked for
        [{"role": "user", "content": "Summarize.\n\nA long text."}],  # dolly, as training reads it
    ]
