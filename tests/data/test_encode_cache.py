"""Encoding in worker processes and from the on-disk cache gives exactly what encoding in place gives."""

from __future__ import annotations

import pytest

from lorakit.config import DataConfig
from lorakit.data import encode_cache
from lorakit.data.encode_cache import EncodeSettings
from lorakit.data.pipeline import encode_rows, kept, read_all
from lorakit.data.report import DataReport
from lorakit.data.records import DataError
from lorakit.templates import resolve_template
from tests.conftest import make_tokenizer, write_jsonl


def _rows(n: int) -> list[dict]:
    rows = [{"instruction": f"Question {i} " + "word " * (i % 9), "output": f"Answer {i}"} for i in range(n)]
    rows[3]["output"] = ""  # dropped before tokenizing: empty answer
    rows[5]["instruction"] = "Long " * 200  # dropped after tokenizing: too long
    return rows


def _encode(path, tokenizer, template, **kwargs):
    settings = {"max_length": 96, "truncation": "drop", "train_on": "all_assistant", **kwargs}
    report = DataReport("train")
    encoded = kept(encode_rows(
        read_all([path], DataConfig())[0], tokenizer, template,
        EncodeSettings(settings.pop("max_length"), settings.pop("truncation"), settings.pop("train_on")), report,
        **settings,
    ))
    return [(e.input_ids, e.labels, e.origin) for e in encoded], report


@pytest.fixture
def data(tmp_path):
    tokenizer = make_tokenizer("chatml")
    return write_jsonl(tmp_path / "d.jsonl", _rows(40)), tokenizer, resolve_template(tokenizer, "auto")


def test_workers_give_the_serial_result(data):
    path, tokenizer, template = data
    serial, serial_report = _encode(path, tokenizer, template, num_proc=1)
    forked, forked_report = _encode(path, tokenizer, template, num_proc=2)
    assert forked == serial and len(serial) == 38
    assert forked_report.dropped == serial_report.dropped == {
        "empty assistant answer": 1, "longer than max_length=96": 1,
    }
    assert forked_report.examples == serial_report.examples


def test_second_run_reads_the_cache_and_tokenizes_nothing(data, tmp_path, monkeypatch):
    path, tokenizer, template = data
    cache = tmp_path / "cache"
    plain, plain_report = _encode(path, tokenizer, template)
    first, _ = _encode(path, tokenizer, template, cache_dir=cache)
    assert first == plain and len(list(cache.glob("*.npz"))) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("encoded a sample the cache holds")

    monkeypatch.setattr(encode_cache, "encode_one", no_tokenizing)
    again, again_report = _encode(path, tokenizer, template, cache_dir=cache)
    assert again == plain
    assert again_report.dropped == plain_report.dropped and again_report.tokens == plain_report.tokens
    assert again_report.loss_tokens == plain_report.loss_tokens


def test_a_changed_setting_or_sample_is_encoded_afresh(data, tmp_path, monkeypatch):
    path, tokenizer, template = data
    cache = tmp_path / "cache"
    _encode(path, tokenizer, template, cache_dir=cache)
    seen: list[str] = []
    real = encode_cache.encode_one

    def counting(tok, tpl, conv, text, settings):
        seen.append(conv[-1]["content"])
        return real(tok, tpl, conv, text, settings)

    monkeypatch.setattr(encode_cache, "encode_one", counting)
    longer, report = _encode(path, tokenizer, template, cache_dir=cache, max_length=2000)
    assert len(seen) == 39 and "longer than max_length=2000" not in report.dropped and len(longer) == 39
    other = resolve_template(tokenizer, "alpaca")
    seen.clear()
    _encode(path, tokenizer, other, cache_dir=cache)
    assert len(seen) == 39 and len(list(cache.glob("*.npz"))) == 3

    rows = _rows(40)
    rows[0]["output"] = "A changed answer"
    write_jsonl(path, rows)
    seen.clear()
    _encode(path, tokenizer, template, cache_dir=cache)
    assert seen == ["A changed answer"]


def test_a_damaged_cache_is_rebuilt(data, tmp_path):
    path, tokenizer, template = data
    cache = tmp_path / "cache"
    plain, _ = _encode(path, tokenizer, template, cache_dir=cache)
    [file] = cache.glob("*.npz")
    file.write_bytes(b"not an archive")
    assert _encode(path, tokenizer, template, cache_dir=cache)[0] == plain
    assert file.read_bytes()[:2] == b"PK"


@pytest.mark.parametrize("num_proc", [1, 2])
def test_bad_sample_in_a_worker_names_its_line(data, num_proc):
    path, tokenizer, template = data
    with pytest.raises(DataError, match=r"d\.jsonl, line 6: sample has \d+ tokens, over max_length=96"):
        _encode(path, tokenizer, template, num_proc=num_proc, truncation="error")


def test_think_handling_is_part_of_the_key(tmp_path):
    tokenizer = make_tokenizer("qwen3")
    path = write_jsonl(tmp_path / "q.jsonl", [{"instruction": "Hi", "output": "Hello"}])
    cache = tmp_path / "cache"
    keep, _ = _encode(path, tokenizer, resolve_template(tokenizer, "auto"), cache_dir=cache)
    strip, _ = _encode(path, tokenizer, resolve_template(tokenizer, "auto", think="strip_empty"), cache_dir=cache)
    assert "<think>" in tokenizer.decode(keep[0][0]) and "<think>" not in tokenizer.decode(strip[0][0])
    assert len(list(cache.glob("*.npz"))) == 2
