"""``lorakit verify`` on a tiny trained run: every check passes, and each fails, naming what differs,
when the hand-off is broken on purpose."""

from __future__ import annotations

import json
import shutil

import torch
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.verify.report import read_report
from lorakit.verify.run import open_subject, verify_run
from lorakit.verify.stops import check_stops
from lorakit.verify.prompt_ids import check_prompt_ids
from lorakit.verify.merge import check_merge
from lorakit.verify.server import check_server
from tests.export.conftest import make_run_dir
from tests.conftest import make_tiny_model_dir


def verdicts(report) -> dict[str, str]:
    return {c.name: c.verdict for c in report.checks}


def test_trained_run_passes_and_runs_show_reads_the_verdicts(run_copy):
    report = verify_run(run_copy)
    assert verdicts(report) == {"it stops": "pass", "prompt ids": "pass", "merge": "pass",
                                "ollama template": "pass" if shutil.which("go") else "skip", "server": "pass"}, report.checks
    assert "data.val_fraction" in report.prompts
    saved = read_report(run_copy)
    assert verdicts(saved) == verdicts(report) and all(c.seconds > 0 for c in saved.checks)
    shown = CliRunner().invoke(app, ["runs", "show", str(run_copy), "--json"])
    info = json.loads(shown.output)
    assert info["verify"] == "pass" and "prompt ids: pass" in info["verify_checks"]


def test_cli_prints_a_row_per_check_and_exits_1_on_a_failure(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model", "chatml", seed=3)
    run = make_run_dir(tmp_path / "run", str(model), "lora.rank=4")  # random adapter: it never learned to stop
    data = tmp_path / "held.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello"}]}) + "\n")
    result = CliRunner().invoke(app, ["verify", str(run), "--data", str(data), "--no-server", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output[result.output.index("{"):])
    stops = next(c for c in report["checks"] if c["name"] == "it stops")
    assert stops["verdict"] == "fail" and stops["details"]["tuned_ran_to_limit"] == 1.0
    assert "ran to the 32-token limit without <|im_end|>" in stops["summary"]
    assert (run / "verify.json").is_file()


def test_a_model_that_never_emits_its_end_token_fails(run_copy):
    subject = open_subject(run_copy)
    end = subject.session.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def never_end(module, inputs, logits):  # the end-of-turn token can never win: the model cannot stop
        logits[..., end] = -1e9
        return logits

    subject.session.model.get_output_embeddings().register_forward_hook(never_end)
    check = check_stops(subject)
    assert check.verdict == "fail" and "ran to the" in check.summary


def test_an_edited_saved_template_fails_prompt_ids_at_the_first_differing_token(run_copy):
    saved = run_copy / "chat_template.jinja"
    saved.write_text(saved.read_text().replace("message['role'] + '\n'", "message['role'] + ':\n'"))
    subject = open_subject(run_copy)
    check = check_prompt_ids(subject)
    assert check.verdict == "fail"
    assert check.details["differing"] == {name: len(subject.held.samples) for name in ("generate", "chat", "server", "eval")}
    mismatch = check.mismatch
    assert mismatch.position == 3  # <|im_start|> us er, then the ':' the edit added
    assert mismatch.got[3] == "27:':'" and mismatch.want[3] == "200:'Ċ'" and "(generate)" in mismatch.where


def test_a_second_bos_fails_prompt_ids(run_copy):
    saved = run_copy / "chat_template.jinja"
    saved.write_text("{{ bos_token }}" + saved.read_text())
    check = check_prompt_ids(open_subject(run_copy))
    # the test tokenizers' BOS is <|im_start|>: the template's own comes second
    assert check.verdict == "fail" and check.mismatch.position == 1
    assert check.mismatch.got[:2] == ["0:'<|im_start|>'"] * 2 and check.mismatch.got_length == check.mismatch.want_length + 1


def test_a_float32_merge_that_is_not_the_adapter_fails(run_copy, monkeypatch):
    subject = open_subject(run_copy)
    merged = subject.merged()
    with torch.no_grad():
        merged.model.norm.weight.mul_(1.5)
    check = check_merge(subject)
    assert check.verdict == "fail" and "float32 merge is not base + adapter" in check.summary


def test_a_half_precision_merge_reports_its_numbers(tmp_path):
    from tests.verify.conftest import train_tiny

    root = tmp_path / "bf16"
    run = train_tiny(root)
    config = root / "model" / "config.json"  # the base as published in bfloat16: merge saves that
    raw = json.loads(config.read_text())
    config.write_text(json.dumps({**raw, "dtype": "bfloat16"}))
    check = check_merge(open_subject(run))
    assert check.verdict in ("pass", "warn") and check.details["saved_dtype"] == "bfloat16"
    assert check.details["saved_max_gap"] > check.details["float32_max_gap"]
    assert ("change" in check.summary) == (check.verdict == "warn")


def test_a_server_that_renders_another_prompt_fails(run_copy, monkeypatch):
    import lorakit.serve.app as serve_app
    from lorakit.infer.generate import prompt_ids

    def wrong(choice, conversation):  # answers every request as if it asked "Hello!"
        return prompt_ids(choice.tokenizer, choice.template, [{"role": "user", "content": "Hello!"}])

    monkeypatch.setattr(serve_app, "chat_prompt_ids", wrong)
    check = check_server(open_subject(run_copy))
    assert check.verdict == "fail" and "server 'Hello! How can I help you today?' (stop)" in check.summary
