"""Every kind of source reads into the same records, each naming its file and line or row."""

from __future__ import annotations

import json
import os
import re

import pytest

from lorakit.config import DataSource
from lorakit.data.records import DataError
from lorakit.data.sources import read_records, read_source
from tests.conftest import write_jsonl

ROWS = [
    {"instruction": "Say hi", "input": "", "output": "Hi"},
    {"instruction": "Add", "input": "2+2", "output": "4"},
]


def fields(src) -> list[dict]:
    return [r.fields for r in src.records]


def test_jsonl_and_json_list_and_json_object(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", ROWS)
    as_list = tmp_path / "b.json"
    as_list.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    wrapped = tmp_path / "c.json"
    wrapped.write_text(json.dumps({"version": 2, "data": ROWS}), encoding="utf-8")
    lines_in_json = tmp_path / "d.json"  # JSON Lines saved as .json
    lines_in_json.write_text(jsonl.read_text(encoding="utf-8"), encoding="utf-8")
    for path in (jsonl, as_list, wrapped, lines_in_json):
        src = read_source(DataSource(path=str(path)))
        assert fields(src) == ROWS, path
    assert read_source(DataSource(path=str(jsonl))).records[1].origin() == f"{jsonl}, line 2"
    assert read_source(DataSource(path=str(as_list))).records[1].origin() == f"{as_list}, record 1"


def test_json_object_with_several_lists_needs_a_key(tmp_path):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"train": ROWS, "test": ROWS[:1]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"lists under \['train', 'test'\].*key: NAME"):
        read_source(DataSource(path=str(path)))
    assert fields(read_source(DataSource(path=str(path), key="test"))) == ROWS[:1]


def test_json_object_of_named_samples_is_read(tmp_path):
    path = tmp_path / "named.json"
    path.write_text(json.dumps({"first": ROWS[0], "second": ROWS[1]}), encoding="utf-8")
    src = read_source(DataSource(path=str(path)))
    assert fields(src) == ROWS[:2]
    assert src.records[1].origin() == f"{path}, record 'second'"
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"version": 2, "note": "no samples here"}), encoding="utf-8")
    with pytest.raises(DataError, match="no list of objects. Write the samples as a JSON list") as info:
        read_source(DataSource(path=str(mixed)))
    assert "key: NAME" not in str(info.value)  # a key cannot help where there is no list


def test_json_errors_say_at_once(tmp_path):
    path = tmp_path / "control.json"
    path.write_bytes(b'[{"instruction": "a\x01b", "output": "x"}]')  # a raw control character in a string
    with pytest.raises(DataError) as info:
        read_source(DataSource(path=str(path)))
    assert "Invalid control character at column" in str(info.value) and "at at" not in str(info.value)


def test_csv_and_tsv_with_quoted_newlines(tmp_path):
    csv_path = tmp_path / "a.csv"
    csv_path.write_text('instruction,input,output\nSay hi,,Hi\n"Add\nthese",2+2,4\nLast,,x\n', encoding="utf-8")
    src = read_source(DataSource(path=str(csv_path)))
    assert [r.fields["instruction"] for r in src.records] == ["Say hi", "Add\nthese", "Last"]
    # The quoted newline makes the third record start on line 5 of the file.
    assert [r.where for r in src.records] == ["line 2", "line 3", "line 5"]
    tsv_path = tmp_path / "a.tsv"
    tsv_path.write_text("prompt\tcompletion\nHello\tWorld\n", encoding="utf-8")
    assert fields(read_source(DataSource(path=str(tsv_path)))) == [{"prompt": "Hello", "completion": "World"}]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    messages = [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]]
    pq.write_table(pa.Table.from_pylist([{"messages": messages[0]}]), path)
    src = read_source(DataSource(path=str(path)))
    assert fields(src) == [{"messages": messages[0]}] and src.records[0].where == "row 0"


def test_save_to_disk_folders(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:1])}).save_to_disk(
        str(tmp_path / "many")
    )
    assert fields(read_source(DataSource(path=str(tmp_path / "one")))) == ROWS
    assert fields(read_source(DataSource(path=str(tmp_path / "many"), split="test"))) == ROWS[:1]
    with pytest.raises(DataError, match="no split 'validation'; it has train, test"):
        read_source(DataSource(path=str(tmp_path / "many"), split="validation"))


def test_plain_folder_is_refused_with_a_glob_hint(tmp_path):
    (tmp_path / "parts").mkdir()
    with pytest.raises(DataError, match=r"not one written by datasets' save_to_disk.*parts/\*\.jsonl"):
        read_source(DataSource(path=str(tmp_path / "parts")))


def test_glob_reads_every_match_in_order(tmp_path):
    (tmp_path / "parts").mkdir()
    write_jsonl(tmp_path / "parts" / "b.jsonl", ROWS[1:])
    write_jsonl(tmp_path / "parts" / "a.jsonl", ROWS[:1])
    src = read_source(DataSource(path=str(tmp_path / "parts" / "*.jsonl")))
    assert fields(src) == ROWS and len(src.files) == 2
    with pytest.raises(DataError, match="matches no file"):
        read_source(DataSource(path=str(tmp_path / "nothing" / "*.jsonl")))


def _fake_hub_cache(root, name: str, files: dict[str, list[dict]]):
    """The layout huggingface_hub writes: refs/main names a snapshot folder holding the files."""
    repo = root / f"datasets--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40, encoding="utf-8")
    for rel, rows in files.items():
        target = repo / "snapshots" / ("0" * 40) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(target, rows)


def test_hub_dataset_from_the_local_cache(tmp_path):
    _fake_hub_cache(tmp_path, "org/tiny", {"data/train.jsonl": ROWS, "data/test.jsonl": ROWS[:1]})
    for spec in ("org/tiny", "hub:org/tiny"):
        src = read_source(DataSource(path=spec), hub_cache=tmp_path, hub_download=False)
        assert fields(src) == ROWS and src.files[0].endswith("data/train.jsonl")
    test = read_source(DataSource(path="org/tiny", split="test"), hub_cache=tmp_path, hub_download=False)
    assert fields(test) == ROWS[:1]


def test_hub_dataset_missing_offline_names_the_cache(tmp_path):
    with pytest.raises(DataError) as info:
        read_source(DataSource(path="org/absent"), hub_cache=tmp_path, hub_download=False)
    message = str(info.value)
    assert "'org/absent' is not in the local Hugging Face cache" in message and str(tmp_path) in message
    assert "hf download --repo-type dataset org/absent" in message


def test_read_records_stops_at_the_first_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: each line must be a JSON object, got list"):
        read_records(path)


# --- hostile input: nesting, encodings and links that must be errors naming the place (issue 25) ---

DEEP = "[" * 100_000  # json.loads recurses once per bracket: a RecursionError, not a parse error


@pytest.mark.parametrize("name,content,where", [
    ("deep.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": ' + DEEP + "\n", "deep.jsonl, line 2"),
    ("deep.json", '[\n {"instruction": "a", "output": "b"},\n {"instruction": ' + DEEP + "\n]", "deep.json, line 3"),
])
def test_json_nested_too_deeply_names_the_file_and_line(tmp_path, name, content, where):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / where}: JSON nested too deeply to read (100,00")
    assert "levels of [ and {, the deepest at column " in message


@pytest.mark.parametrize("name,content,expected", [
    # The bad byte is the 7th of line 3 and the 35th of the file: the message must give the 7.
    ("bad.csv", b"instruction,output\nhi,there\nab,caf\xe9\n", "bad.csv, line 3: not UTF-8 text (byte 7 of the line"),
    # A BOM is not counted: line 1 starts after it, as an editor shows it.
    ("bom.csv", b"\xef\xbb\xbfinstruction,output\nab,caf\xe9\n", "bom.csv, line 2: not UTF-8 text (byte 7 of the line"),
    ("bad.json", b'[\n {"instruction": "a",\n  "output": "caf\xe9"}\n]',
     "bad.json, line 3: not UTF-8 text (byte 17 of the line"),
    ("bad.jsonl", b'{"instruction": "a", "output": "b"}\n{"output": "caf\xe9"}\n',
     "bad.jsonl, line 2: not UTF-8 text (byte 16 of the line"),
])
def test_bad_utf8_names_the_byte_within_its_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(expected)):
        read_records(path)


def test_a_symlink_loop_is_named_as_such_not_as_missing(tmp_path):
    (tmp_path / "a.jsonl").symlink_to("b")
    (tmp_path / "b").symlink_to("a.jsonl")
    (tmp_path / "loop").symlink_to("loop")
    for path, culprit in ((tmp_path / "a.jsonl", tmp_path / "a.jsonl"), (tmp_path / "loop" / "d.jsonl",
                                                                        tmp_path / "loop")):
        with pytest.raises(DataError, match=re.escape(f"cannot be read: {culprit} is a symlink loop")):
            read_source(DataSource(path=str(path)))


def test_a_glob_refuses_a_broken_link_it_matches(tmp_path):
    write_jsonl(tmp_path / "good.jsonl", ROWS)
    (tmp_path / "bad.jsonl").symlink_to("bad.jsonl")
    (tmp_path / "gone.jsonl").symlink_to("nowhere.jsonl")
    with pytest.raises(DataError) as info:
        read_source(DataSource(path=str(tmp_path / "*.jsonl")))
    assert f"matches {tmp_path / 'bad.jsonl'}, which cannot be read: " in str(info.value)
    (tmp_path / "bad.jsonl").unlink()
    with pytest.raises(DataError, match=r"gone.jsonl is a symlink to nowhere.jsonl, which does not exist"):
        read_source(DataSource(path=str(tmp_path / "*.jsonl")))


def test_a_recursive_glob_refuses_a_folder_link_back_up_the_tree(tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    write_jsonl(tmp_path / "data" / "a.jsonl", ROWS)
    (tmp_path / "data" / "sub" / "up").symlink_to("..")  # '**' would read a.jsonl once per turn, 40 times
    with pytest.raises(DataError) as info:
        read_source(DataSource(path=str(tmp_path / "data" / "**" / "*.jsonl")))
    data = os.path.realpath(tmp_path / "data")
    assert f"'**' reaches {tmp_path / 'data' / 'sub' / 'up'}, which is {data} again" in str(info.value)
    assert len(read_source(DataSource(path=str(tmp_path / "data" / "*.jsonl"))).records) == 2  # no '**': fine
