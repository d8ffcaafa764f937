"""The report's pieces: the first mismatch shown token by token, verify.json read back, skips with reasons."""

from __future__ import annotations

from pathlib import Path

import lorakit.verify.gguf as gguf_check
from lorakit.verify.report import FAIL, PASS, Check, VerifyReport, first_mismatch, read_report, write_report


def text(token: int) -> str:
    return f"t{token}"


def test_first_mismatch_names_the_position_and_the_tokens_around_it():
    found = first_mismatch([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 6, 7, 8], text, "sample (chat)")
    assert found.position == 4 and found.want == ["2:'t2'", "3:'t3'", "4:'t4'", "5:'t5'", "6:'t6'", "7:'t7'", "8:'t8'"]
    assert found.got[3] == "9:'t9'" and found.lines()[0] == "sample (chat): first difference at token 4 (lengths 8 and 8)"
    assert first_mismatch([1, 2], [1, 2], text, "x") is None


def test_a_missing_or_extra_tail_is_a_mismatch_at_the_shorter_length():
    assert first_mismatch([1, 2, 3], [1, 2], text, "x").position == 2
    extra = first_mismatch([1, 2], [1, 2, 3], text, "x")
    assert extra.position == 2 and extra.got == ["1:'t1'", "2:'t2'", "3:'t3'"] and extra.got_length == 3


def test_verify_json_round_trips(tmp_path):
    mismatch = first_mismatch([1, 2], [1, 3], text, "x")
    report = VerifyReport("runs/demo", "2 from data.eval",
                          [Check("prompt ids", FAIL, "differ", mismatch, {"n": 2}, 0.5), Check("merge", PASS, "ok")])
    write_report(tmp_path, report)
    back = read_report(tmp_path)
    assert back == report and back.verdict == FAIL and back.failed
    assert read_report(tmp_path / "nothing") is None


def test_gguf_rows_skip_with_the_reason_without_llama_cpp(monkeypatch):
    monkeypatch.setattr(gguf_check, "missing", lambda: "llama.cpp's Python binding is not installed")
    rows = gguf_check.check_gguf(None, Path("model.gguf"))
    assert [(r.name, r.verdict, r.summary) for r in rows] == [
        ("gguf model.gguf", "skip", "llama.cpp's Python binding is not installed")]
