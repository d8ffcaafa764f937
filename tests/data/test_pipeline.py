"""Reading files into samples: shapes, counts, and errors that name the record."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorakit.config import DataConfig
from lorakit.data.encode_cache import EncodeSettings
from lorakit.data.pipeline import build_splits, encode_rows, kept, read_all
from lorakit.data.records import DataError
from lorakit.data.report import DataReport
from lorakit.templates import resolve_template
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
    samples = read_all([alpaca, chat], DataConfig(system_prompt="Be kind."))[0]
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
    report = DataReport("train")
    encoded = kept(encode_rows(
        read_all([path], DataConfig())[0], tokenizer, resolve_template(tokenizer, "auto"),
        EncodeSettings(max_length=64, truncation="drop", train_on="all_assistant"), report,
    ))
    assert len(encoded) == report.kept == 1 and report.read == 3
    assert report.dropped == {"empty assistant answer": 1, "longer than max_length=64": 1}
    assert report.examples["empty assistant answer"] == [f"{path}, line 2"]
    assert any("dropped 1: longer than max_length=64" in line for line in report.lines())


def test_a_sample_with_an_empty_prompt_is_dropped_and_named(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [
        {"instruction": "Hi", "output": "Hello"},
        {"instruction": "", "input": " ", "output": "An answer to nothing"},
        {"instruction": "", "input": "2+2", "output": "4"},  # the input alone is a prompt
    ])
    other = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "", "completion": "Also an answer to nothing"}])
    tokenizer = make_tokenizer("chatml")
    splits = build_splits(DataConfig(train=[str(path), str(other)], shuffle=False, cache_dir=None), tokenizer,
                          resolve_template(tokenizer, "auto"))
    report = splits.reports[0]
    assert report.kept == 2 and report.dropped == {"empty prompt": 2} and report.balance()
    assert report.examples["empty prompt"] == [f"{path}, line 2", f"{other}, line 1"]
    assert f"  dropped 2: empty prompt (e.g. {path}, line 2; {other}, line 1)" in report.lines()
    finding = next(f for f in report.findings if f.code == "empty_prompt")
    assert finding.level == "warning" and finding.count == 2 and finding.examples == report.examples["empty prompt"]


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
        read_all([path], DataConfig())[0]
    assert expected in str(info.value) and "bad.jsonl" in str(info.value)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"instruction": "caf\u00e9", "output": "x"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_all([path], DataConfig())[0]


# --- every bad input names its file and line (or record/row), strict by default -------------

def _write(tmp_path, name: str, content: bytes | str):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("a.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "x"}\n',
         "a.jsonl, line 2: not UTF-8 text"),
        ("a.json", b'[\n {"instruction": "a",\n  "output": "caf\xe9"}\n]', "a.json, line 3: not UTF-8 text"),
        ("a.json", '[{"instruction": "a", "output": "b"}, "oops"]', "a.json, record 1: each sample must be a JSON object"),
        ("a.json", '[{"instruction": "a",\n "output": }]', "a.json, line 2: not valid JSON"),
        ("a.csv", "instruction,input\nHi,there\n", "a.csv, line 2: missing required field 'output'"),
        ("a.csv", "instruction,output\nHi,there,extra\n", "a.csv, line 2: 1 more cell(s) than the header"),
        ("a.jsonl", '{"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]}\n',
         "a.jsonl, line 1: turn 1 has unknown role 'robot'"),
        ("a.jsonl", "\n\n", "a.jsonl is empty"),
        ("a.txt", "hello", "unsupported file type '.txt'"),
    ],
)
def test_more_bad_inputs_name_the_place(tmp_path, name, content, expected):
    path = _write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        read_all([path], DataConfig())[0]
    assert expected in str(info.value)


def test_parquet_non_string_field_names_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "Q", "completion": "A"}, {"prompt": "Q", "completion": None}]), path)
    # Parquet has the column in every row; the value is what is missing, and the message says so.
    with pytest.raises(DataError, match=r"a.parquet, row 1: field 'completion' is empty \(null\)"):
        read_all([path], DataConfig())[0]


# --- skipping bad records: counted, first reasons kept, never silent ------------------------

GOOD = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(8)]


def test_skip_bad_records_counts_them_with_reasons(tmp_path):
    lines = [json.dumps(r) for r in GOOD[:3]] + [
        '{"instruction": "broken", ',
        json.dumps({"instruction": "no answer"}),
        json.dumps({"instruction": "number", "output": 5}),
    ]
    path = _write(tmp_path, "mixed.jsonl", ("\n".join(lines) + "\n").encode() + b'{"instruction": "\xff"}\n')
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")
    with pytest.raises(DataError, match="mixed.jsonl, line 4: not valid JSON"):
        build_splits(DataConfig(train=[str(path)]), tokenizer, template)
    splits = build_splits(DataConfig(train=[str(path)], skip_bad_records=True), tokenizer, template)
    report = splits.reports[0]
    assert report.records == 7 and report.skipped == 4 and report.kept == 3 and len(splits.train) == 3
    assert [r.split(": ", 1)[0].rsplit(", ", 1)[1] for r in report.skip_reasons] == ["line 4", "line 5", "line 6", "line 7"]
    assert "missing required field 'output'" in report.skip_reasons[1]
    assert any(line.startswith("  skipped 4 bad records") for line in report.lines())
    assert report.balance()


# --- held-out split, weights, shuffle --------------------------------------------------------

def _origins(splits_part) -> list[str]:
    return [e.origin for e in splits_part]


def test_val_fraction_is_seeded_and_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", GOOD * 1 + [{"instruction": f"More {i}", "output": "x"} for i in range(12)])
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")
    first = build_splits(DataConfig(train=[str(path)], val_fraction=0.25, seed=1), tokenizer, template)
    again = build_splits(DataConfig(train=[str(path)], val_fraction=0.25, seed=1), tokenizer, template)
    other = build_splits(DataConfig(train=[str(path)], val_fraction=0.25, seed=2), tokenizer, template)
    assert len(first.train) == 15 and len(first.eval) == 5
    assert not set(_origins(first.train)) & set(_origins(first.eval))
    assert _origins(first.train) == _origins(again.train) and _origins(first.eval) == _origins(again.eval)
    assert set(_origins(first.eval)) != set(_origins(other.eval))
    train_report, eval_report = first.reports
    assert train_report.held_out == eval_report.from_train == 5
    assert train_report.balance() and eval_report.balance()
    # Without shuffling, the last ones are held out and the order is the file's.
    plain = build_splits(DataConfig(train=[str(path)], val_fraction=0.25, shuffle=False), tokenizer, template)
    assert _origins(plain.eval) == [f"{path}, line {n}" for n in range(16, 21)]
    assert _origins(plain.train) == [f"{path}, line {n}" for n in range(1, 16)]


def test_eval_by_file_and_leak_warning(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", GOOD)
    held = write_jsonl(tmp_path / "held.jsonl", GOOD[:1] + [{"instruction": "New?", "output": "Yes."}])
    tokenizer = make_tokenizer("chatml")
    splits = build_splits(DataConfig(train=[str(train)], eval=[str(held)]), tokenizer, resolve_template(tokenizer, "auto"))
    assert len(splits.train) == 8 and len(splits.eval) == 2
    leak = [f for f in splits.reports[1].findings if f.code == "eval_in_train"]
    assert leak and leak[0].count == 1 and leak[0].examples == [f"{held}, line 1 = {train}, line 1"]


def test_weights_repeat_and_leave_out_counted(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", GOOD[:4])
    b = write_jsonl(tmp_path / "b.jsonl", GOOD[4:])
    tokenizer = make_tokenizer("chatml")
    cfg = DataConfig(train=[{"path": str(a), "weight": 2}, {"path": str(b), "weight": 0.5}])
    splits = build_splits(cfg, tokenizer, resolve_template(tokenizer, "auto"))
    origins = _origins(splits.train)
    assert len(origins) == 10
    assert sum(o.startswith(str(a)) for o in origins) == 8 and sum(o.startswith(str(b)) for o in origins) == 2
    report = splits.reports[0]
    assert (report.repeated, report.left_out, report.read) == (4, 2, 10) and report.balance()
    assert "a.jsonl x2 (alpaca, 4 records)" in report.lines()[1]


def test_trailing_user_turn_removed_and_duplicates_counted(tmp_path):
    conv = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"},
                              {"from": "human", "value": "unanswered"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [conv, conv, {"conversations": [{"from": "human", "value": "only"}]}])
    tokenizer = make_tokenizer("chatml")
    splits = build_splits(DataConfig(train=[str(path)]), tokenizer, resolve_template(tokenizer, "auto"))
    report = splits.reports[0]
    codes = {f.code: f for f in report.findings}
    assert codes["ends_on_user"].count == 3 and codes["ends_on_user"].examples[0] == f"{path}, line 1"
    assert codes["duplicates"].count == 1 and codes["duplicates"].examples == [f"{path}, line 2 repeats {path}, line 1"]
    assert report.dropped == {"no assistant turn": 1} and report.kept == 2
    decoded = tokenizer.decode(splits.train[0].input_ids)
    assert "unanswered" not in decoded and decoded.endswith("A<|im_end|>\n")


def test_text_shape_and_train_on_everything(tmp_path):
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "The quick brown fox."}])
    chat = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "Hello", "completion": "Hi"}])
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")
    splits = build_splits(DataConfig(train=[str(text), str(chat)], train_on="everything", shuffle=False), tokenizer, template)
    for item in splits.train:
        assert item.labels == item.input_ids
    assert tokenizer.decode(splits.train[0].input_ids) == "The quick brown fox.<|im_end|>"
    assert tokenizer.decode(splits.train[1].input_ids).startswith("<|im_start|>user\nHello")


@settings(max_examples=25, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(["good", "empty", "long", "broken", "no_output", "other_shape"]), min_size=1, max_size=12),
    weight=st.sampled_from([0.5, 1.0, 1.5, 3.0]),
    val=st.sampled_from([0.0, 0.2, 0.5]),
    seed=st.integers(0, 3),
)
def test_property_every_record_is_accounted_for(kinds, weight, val, seed):
    rows = {
        "good": '{"instruction": "Q?", "output": "A."}',
        "empty": '{"instruction": "Q?", "output": " "}',
        "long": json.dumps({"instruction": "word " * 80, "output": "A."}),
        "broken": '{"instruction": ',
        "no_output": '{"instruction": "Q?"}',
        "other_shape": '{"text": "a record of another shape than the first"}',
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.jsonl"
        path.write_text("\n".join(['{"instruction": "first", "output": "ok"}'] + [rows[k] for k in kinds]) + "\n")
        cfg = DataConfig(train=[{"path": str(path), "weight": weight}], val_fraction=val, seed=seed,
                         skip_bad_records=True, max_length=64)
        tokenizer = TOKENIZER.setdefault("chatml", make_tokenizer("chatml"))
        splits = build_splits(cfg, tokenizer, resolve_template(tokenizer, "auto"), require_samples=False)
    for report in splits.reports:
        assert report.balance(), report.lines()
    train = splits.reports[0]
    assert train.records == len(kinds) + 1
    assert train.skipped == sum(k in ("broken", "no_output", "other_shape") for k in kinds)
    assert len(splits.train) == train.kept


TOKENIZER: dict = {}
