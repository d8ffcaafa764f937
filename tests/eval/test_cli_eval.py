"""``lorakit eval`` as a user runs it, on a tiny trained run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakit.config_file import load_config
from lorakit.train import recipe
from tests.conftest import make_tiny_model_dir, write_jsonl
from tests.test_cli import lorakit

ROWS = [
    {"instruction": "Say the city of Maria.", "input": "", "output": "Lisbon"},
    {"instruction": "What is two plus two?", "input": "", "output": "It is four."},
    {"instruction": "Extract the name.", "input": "Maria is 34.", "output": '{"name": "Maria"}'},
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("eval-cli")
    model = make_tiny_model_dir(tmp / "tiny-model")
    data = write_jsonl(tmp / "held_out.jsonl", ROWS)
    out = tmp / "run"
    recipe.run(load_config(None, [
        f"model.name={model}", f"data.train={data}", f"data.eval={data}", f"output_dir={out}",
        "train.max_steps=2", "train.batch_size=3", "train.progress_bar=false", "generation.max_new_tokens=5",
    ]))
    return out, data


@pytest.mark.slow
def test_eval_writes_reports_with_limit_and_scorer(tiny_run, tmp_path):
    run, data = tiny_run
    checks = tmp_path / "checks.py"
    checks.write_text("def short(prediction, reference):\n    return len(prediction) < 1000\n", encoding="utf-8")
    result = lorakit("eval", str(run), "--limit", "2", "--scorer", f"{checks}:short", "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert "base vs tuned on 2 held-out samples" in result.stdout
    assert "short" in result.stdout and "chrF" in result.stdout and "ROUGE-L" in result.stdout
    report = json.loads((tmp_path / "o" / "eval.json").read_text(encoding="utf-8"))
    assert len(report["samples"]) == 2 and report["settings"]["limit"] == 2
    assert report["settings"]["data"] == [str(data)]  # the run's own data.eval by default
    scorer_row = next(m for m in report["metrics"] if m["key"] == "scorer")
    assert scorer_row["base"] == scorer_row["tuned"] == 1.0
    assert (tmp_path / "o" / "eval.md").is_file() and not (run / "eval.json").exists()


@pytest.mark.slow
def test_eval_base_only_and_bad_scorer(tiny_run, tmp_path):
    run, data = tiny_run
    base = lorakit("eval", str(run), "--base", "--data", str(data), "--out", str(tmp_path))
    assert base.returncode == 0, base.stderr
    assert "base model on 3 held-out samples" in base.stdout
    report = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    assert all(m["tuned"] is None for m in report["metrics"])
    # A plain model folder, not a run: the same single column.
    plain = lorakit("eval", str(run.parent / "tiny-model"), "--data", str(data), "--out", str(tmp_path / "plain"),
                    "--max-new-tokens", "4")
    assert plain.returncode == 0, plain.stderr
    assert "base model on 3 held-out samples" in plain.stdout and (tmp_path / "plain" / "eval.md").is_file()
    bad = lorakit("eval", str(run), "--scorer", "checks_missing.py:fn", "--out", str(tmp_path))
    assert bad.returncode == 2
    assert "checks_missing.py does not exist" in bad.stderr


@pytest.mark.slow
def test_train_refuses_eval_at_end_without_held_out_data(tmp_path):
    result = lorakit("train", "--set", "eval.at_end=true", "--set", f"data.train={tmp_path / 'x.jsonl'}")
    assert result.returncode == 2
    assert "eval.at_end needs held-out samples: set data.eval" in result.stderr


@pytest.mark.slow
def test_train_checks_the_scorer_before_training(tmp_path):
    # The data does not even exist: the scorer is checked first, so nothing is trained for nothing.
    result = lorakit("train", "--set", "eval.at_end=true", "--set", f"data.train={tmp_path / 'x.jsonl'}",
                     "--set", f"data.eval={tmp_path / 'y.jsonl'}", "--set", f"eval.scorer={tmp_path / 'c.py'}:fn")
    assert result.returncode == 2
    assert f"scorer {tmp_path / 'c.py'}:fn: file {tmp_path / 'c.py'} does not exist" in result.stderr


@pytest.mark.slow
def test_eval_scores_any_run_with_the_reward_functions_asked_for(tiny_run, tmp_path):
    """--reward scores an SFT run's answers with GRPO's reward functions, built-in or the user's own;
    a reward that does not exist is one error line before any model loads."""
    run, _ = tiny_run
    mine = tmp_path / "mine.py"
    mine.write_text("def chars(prompts, completions, **columns):\n    return [float(len(c)) for c in completions]\n",
                    encoding="utf-8")
    result = lorakit("eval", str(run), "--reward", "builtin:exact", "--reward", f"{mine}:chars",
                     "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "o" / "eval.json").read_text(encoding="utf-8"))
    rows = {m["key"]: m for m in report["metrics"]}
    answers = [s["tuned"]["answer"] for s in report["samples"]]
    assert rows["reward/chars"]["tuned"] == pytest.approx(sum(len(a) for a in answers) / len(answers))
    assert rows["reward/exact"]["tuned"] == pytest.approx(rows["exact_match"]["tuned"])
    assert "reward chars" in result.stdout
    bad = lorakit("eval", str(run), "--reward", f"{mine}:missing", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and bad.stderr.count("error:") == 1 and "missing" in bad.stderr
    assert not (tmp_path / "bad").exists()
