"""verify's GGUF rows (llama.cpp as the judge) and its Ollama row (Go as the judge) on a tiny trained run:
they pass on a faithful export and fail, naming what differs, on one broken on purpose."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lorakit.export.gguf as gguf_export
from lorakit.cli import app
from lorakit.export.gguf import export_gguf
from lorakit.run import RunFolder
from lorakit.verify.gguf import check_gguf
from lorakit.verify.ollama import check_ollama
from lorakit.verify.report import read_report
from lorakit.verify.run import open_subject, verify_run
from tests.export.llamacpp import needs_llama_cpp
from tests.verify.conftest import train_tiny

needs_go = pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain to run text/template")


def rows(checks) -> dict[str, str]:
    return {c.name: c.verdict for c in checks}


# Exporting from a run records the GGUF in it (exports.json), and verify without --gguf checks what is recorded:
# no test exports from the module's shared ``trained_run``, or the rows another test sees would depend on order.


@pytest.fixture(scope="module")
def exported_run(trained_run, tmp_path_factory) -> Path:
    """A copy of the trained run that the shared f16 export is made from (and recorded in)."""
    return Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("exported") / "run"))


@pytest.fixture(scope="module")
def f16(exported_run, tmp_path_factory):
    return export_gguf(exported_run, tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf", "f16")[0]


@needs_llama_cpp
@needs_go
def test_a_faithful_f16_export_passes_every_row(exported_run, f16):
    subject = open_subject(exported_run)
    checks = check_gguf(subject, f16) + [check_ollama(subject, f16), check_ollama(subject, None)]
    assert rows(checks) == {"gguf tiny-f16.gguf: chat prompt": "pass", "gguf tiny-f16.gguf: raw text": "pass",
                            "gguf tiny-f16.gguf: answers": "pass", "ollama tiny-f16.Modelfile": "pass",
                            "ollama template": "pass"}, checks
    assert checks[2].details["equal_answers"] == 1.0


@needs_llama_cpp
def test_a_gguf_whose_chat_template_was_edited_fails(run_copy, tmp_path, monkeypatch):
    build = gguf_export.build_vocab

    def edited(*args, **kwargs):
        vocab = build(*args, **kwargs)
        vocab.chat_template = vocab.chat_template.replace("message['role'] + '\n'", "message['role'] + ': '")
        return vocab

    monkeypatch.setattr(gguf_export, "build_vocab", edited)
    path, _ = export_gguf(run_copy, tmp_path / "edited.gguf", "f16")
    check = check_gguf(open_subject(run_copy), path)[0]
    assert check.verdict == "fail" and "differ from training's ids" in check.summary
    assert check.mismatch.position == 3 and "(llama.cpp chat template)" in check.mismatch.where


@needs_llama_cpp
def test_a_gguf_with_a_wrong_end_of_turn_id_fails(run_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_export, "end_of_turn_id", lambda tokenizer: 5)
    path, _ = export_gguf(run_copy, tmp_path / "wrong-eot.gguf", "f16")
    check = check_gguf(open_subject(run_copy), path)[0]
    assert check.verdict == "fail" and "the GGUF's end-of-turn id is 5" in check.summary
    assert "<|im_end|>" in check.summary


@needs_llama_cpp
def test_a_gguf_lacking_the_runs_added_token_fails(tmp_path):
    run = train_tiny(tmp_path, "model.special_tokens=[<tool>]")
    base_export, _ = export_gguf(tmp_path / "model", tmp_path / "base.gguf", "f16")  # made before <tool> was added
    check = next(c for c in check_gguf(open_subject(run), base_export) if c.name.endswith("raw text"))
    assert check.verdict == "fail" and "added token(s) <tool>" in check.summary


@needs_go
def test_a_modelfile_template_that_drops_the_system_turn_fails(trained_run, f16, tmp_path):
    gguf = tmp_path / f16.name
    shutil.copy(f16, gguf)
    text = f16.with_suffix(".Modelfile").read_text()
    dropped = re.sub(r'(\{\{- if eq \$m\.Role "system" \}\}).*', r"\1", text)
    assert dropped != text
    (tmp_path / "tiny-f16.Modelfile").write_text(dropped)
    check = check_ollama(open_subject(trained_run), gguf)
    assert check.verdict == "fail" and "1 of" in check.summary
    assert "+ a system turn (ollama template)" in check.mismatch.where


@needs_llama_cpp
@needs_go
def test_export_gguf_verify_adds_its_rows_to_verify_json(run_copy, tmp_path):
    verify_run(run_copy, server=False)  # the adapter's rows first: the export's rows join them
    out = tmp_path / "tiny-q8_0.gguf"
    result = CliRunner().invoke(app, ["export", "gguf", str(run_copy), "--out", str(out), "--type", "q8_0", "--verify"])
    assert result.exit_code == 0, result.output
    report = read_report(run_copy)
    names = rows(report.checks)
    assert names["it stops"] == "pass" and names["ollama tiny-q8_0.Modelfile"] == "pass"
    answers = next(c for c in report.checks if c.name == "gguf tiny-q8_0.gguf: answers")
    assert answers.details["file_type"] == "MOSTLY_Q8_0" and answers.details["most_mean_gap"] == 0.02
    assert "thresholds" in answers.summary
    shown = json.loads(CliRunner().invoke(app, ["runs", "show", str(run_copy), "--json"]).output)
    assert "gguf tiny-q8_0.gguf: chat prompt: pass" in shown["verify_checks"]


def test_export_verify_needs_a_run(tmp_path):
    from tests.conftest import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "model")
    result = CliRunner().invoke(app, ["export", "gguf", str(model), "--out", str(tmp_path / "m.gguf"), "--verify"])
    assert result.exit_code == 2 and "give a run folder" in result.output


@needs_llama_cpp
def test_an_adapter_only_gguf_runs_on_the_base_its_modelfile_names(run_copy, tmp_path):
    from lorakit.export.gguf_adapter import export_adapter_gguf

    adapter, _, _ = export_adapter_gguf(run_copy, tmp_path / "tiny-lora.gguf", "f16", with_base=True)
    assert RunFolder(run_copy).exports() == [adapter.resolve()]  # recorded: verify RUN checks it unasked
    checks = check_gguf(open_subject(run_copy), adapter)
    assert rows(checks) == {f"gguf tiny-lora.gguf: {row}": "pass" for row in ("chat prompt", "raw text", "answers")}, \
        checks
    alone = tmp_path / "alone" / "tiny-lora.gguf"  # no Modelfile, so no base to run it on
    alone.parent.mkdir()
    shutil.copy(adapter, alone)
    skipped = check_gguf(open_subject(run_copy), alone)
    assert rows(skipped) == {"gguf tiny-lora.gguf": "skip"} and "--with-base" in skipped[0].summary


@needs_llama_cpp
@needs_go
def test_verify_without_gguf_checks_what_export_wrote_from_the_run(run_copy, tmp_path):
    """`lorakit verify RUN` with no --gguf: the GGUFs `export gguf` wrote from the run, found through exports.json;
    one deleted since is a warning naming it, and the rest are still checked."""
    kept, _ = export_gguf(run_copy, tmp_path / "kept.gguf", "f16")
    deleted, _ = export_gguf(run_copy, tmp_path / "deleted.gguf", "f16")
    export_gguf(run_copy, kept, "f16", overwrite=True)  # written again: recorded once, now the newest
    assert RunFolder(run_copy).exports() == [deleted.resolve(), kept.resolve()]
    deleted.unlink()
    result = CliRunner().invoke(app, ["verify", str(run_copy), "--no-server", "--json", "--limit", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    got = {c["name"]: c["verdict"] for c in report["checks"]}
    assert got["gguf deleted.gguf"] == "warn" and "ollama deleted.Modelfile" not in got
    gone = next(c for c in report["checks"] if c["name"] == "gguf deleted.gguf")
    assert str(deleted.resolve()) in gone["summary"] and "--gguf" in gone["summary"]
    assert {got[f"gguf kept.gguf: {row}"] for row in ("chat prompt", "raw text", "answers")} == {"pass"}
    assert got["ollama kept.Modelfile"] == "pass" and "ollama template" not in got


def test_a_run_without_exports_verifies_the_modelfile_export_would_write(run_copy):
    """No exports.json (or a damaged one): no GGUF row, and the Ollama row checks the Modelfile export would write."""
    (run_copy / "exports.json").write_text("{not json")
    assert RunFolder(run_copy).exports() == []
    report = verify_run(run_copy, exports_only=True)
    assert [c.name for c in report.checks] == ["ollama template"]
