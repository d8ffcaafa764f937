"""Evaluating on held-out pairs: preference accuracy base against tuned, beside the generation
metrics scored against the chosen answer."""

from __future__ import annotations

import json

import pytest

from lorakit.config import EvalConfig, GenerationConfig
from lorakit.config_file import load_config
from lorakit.eval.results import markdown
from lorakit.eval.run import evaluate
from lorakit.infer.session import open_session
from lorakit.train import recipe
from lorakit.train.methods import METHODS
from tests.conftest import write_jsonl
from tests.train.test_preference import PAIRS


@pytest.fixture
def dpo_run(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "run"
    recipe.run(load_config(None, [
        f"model.name={tiny_model_dir}", f"data.train={data}", f"output_dir={out}", "method=dpo", "lora.dropout=0",
        "train.max_steps=30", "train.batch_size=4", "train.learning_rate=0.05", "train.progress_bar=false",
        "data.cache_dir=null", "preference.beta=0.05",
    ]))
    return out


def test_a_dpo_run_is_scored_on_pairs(dpo_run, tmp_path):
    held = write_jsonl(tmp_path / "held.jsonl", [*PAIRS, {"prompt": "Hi", "chosen": "Hello.", "rejected": "Hello."}])
    session = open_session(str(dpo_run), tmp_path / "cache")
    data = load_config(dpo_run / "lorakit.yaml").data
    result = evaluate(session, [held], data, GenerationConfig(max_new_tokens=6), EvalConfig(), tmp_path / "out",
                      show_progress=False, reads=METHODS["dpo"].rows)
    rows = {r.key: r for r in result.metrics}
    accuracy = rows["preference_accuracy"]
    # Trained on these very pairs: the tuned model prefers every chosen answer, the random base does not.
    assert accuracy.tuned == 100.0 and accuracy.base < 100.0
    margins = result.settings["preference"]["margins"]
    assert all(t > b for t, b in zip(margins["tuned"], margins["base"]))  # every pair moved toward chosen
    assert {"exact_match", "chrf", "answer_loss"} <= set(rows)  # the generation metrics, beside it
    assert [s.reference for s in result.samples] == [p["chosen"] for p in PAIRS]  # scored against chosen
    where = f"{held}, line 5"
    assert result.skipped["chosen and rejected answers are identical"] == [where]
    saved = json.loads((tmp_path / "out" / "eval.json").read_text(encoding="utf-8"))
    assert len(saved["settings"]["preference"]["margins"]["tuned"]) == len(PAIRS)
    assert "| preference accuracy |" in markdown(result) and "pts |" in markdown(result)
