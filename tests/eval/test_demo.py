"""The demo task end to end through the CLI: a short real fine-tune, then base against tuned.

Six optimizer steps are enough for SmolLM2-135M to learn the demo's JSON format (the full
demo runs 30); the test asserts what a user would look for in the table: the tuned column ahead.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, needs_embedded
from tests.test_cli import lorakit


@pytest.mark.slow
@needs_embedded
def test_demo_tuned_model_is_ahead_of_base(tmp_path, embedded_cache):
    out = tmp_path / "demo"
    result = lorakit(
        "train", str(REPO / "examples" / "demo" / "config.yaml"),
        "--set", f"output_dir={out}", "--set", f"model.cache_dir={embedded_cache}",
        "--set", "train.max_steps=6", "--set", "train.warmup=1", "--set", "train.progress_bar=false",
        "--set", "eval.at_end=true", "--set", "eval.limit=6", "--set", "generation.max_new_tokens=32",
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "base vs tuned on 6 held-out samples" in result.stdout
    assert "answers that changed most:" in result.stdout

    report = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    rows = {m["key"]: m for m in report["metrics"]}
    assert rows["exact_match"]["tuned"] > rows["exact_match"]["base"], rows["exact_match"]
    for key in ("chrf", "bleu", "rouge_l"):
        assert rows[key]["tuned"] > rows[key]["base"], rows[key]
    assert rows["answer_loss"]["tuned"] < rows["answer_loss"]["base"], rows["answer_loss"]
    assert len(report["samples"]) == 6 and report["settings"]["limit"] == 6
    # The same numbers reach summary.json and the markdown report.
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["eval"]["exact_match"] == {"base": rows["exact_match"]["base"], "tuned": rows["exact_match"]["tuned"]}
    assert "| exact match |" in (out / "eval.md").read_text(encoding="utf-8")
