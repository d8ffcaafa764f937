"""The training recipe end to end, in-process: what a run writes and that it learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorakit.config_file import load_config
from lorakit.train import recipe
from tests.conftest import REPO, needs_embedded, write_jsonl

ROWS = [
    {"instruction": "Say the city of Maria.", "input": "", "output": "Lisbon"},
    {"instruction": "What is two plus two?", "input": "", "output": "It is four."},
    {"instruction": "Extract the name.", "input": "Maria is 34.", "output": '{"name": "Maria"}'},
    {"instruction": "", "input": "", "output": ""},  # empty answer: dropped and counted
]


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_tiny_run_writes_a_complete_run_folder(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS * 4)
    out = tmp_path / "run"
    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"data.train={data}", f"data.eval={data}", f"output_dir={out}",
        "train.max_steps=25", "train.batch_size=4", "train.learning_rate=0.02", "train.logging_steps=1",
        "train.warmup=0", "train.scheduler=constant", "lora.rank=8", "lora.dropout=0", "train.progress_bar=false",
    ])
    summary = recipe.run(cfg)

    for name in ("adapter_config.json", "adapter_model.safetensors", "lorakit.yaml", "metrics.jsonl",
                 "summary.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    seen = losses(out)
    assert len(seen) == 25
    assert sum(seen[-5:]) / 5 < 0.7 * sum(seen[:5]) / 5  # it learns
    train_report = summary["data"][0]
    assert train_report["read"] == 16 and train_report["kept"] == 12
    assert train_report["dropped"] == {"empty assistant answer": 4}
    assert summary["tokens_seen"] > 0 and summary["loss_tokens_seen"] < summary["tokens_seen"]
    assert summary["eval_loss"] is not None
    # Each training row carries the process's peak memory so far (what lorakit ui shows while it trains).
    memory = [json.loads(line).get("peak_memory_bytes") for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(memory) == 25 and memory == sorted(memory) and 0 < memory[-1] <= summary["peak_rss_bytes"]

    # Plain peft and transformers read the folder back, template included.
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tokenizer.chat_template
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)


def test_same_seed_same_adapter(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "train.jsonl", ROWS * 2)
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        recipe.run(load_config(None, [
            f"model.name={tiny_model_dir}", f"data.train={data}", f"output_dir={out}",
            "train.max_steps=4", "train.batch_size=2", "train.progress_bar=false",
        ]))
        outs.append(load_file(out / "adapter_model.safetensors"))
    assert outs[0].keys() == outs[1].keys()
    for key in outs[0]:
        assert (outs[0][key] == outs[1][key]).all(), key


def test_run_from_python_evaluates_at_end_as_lorakit_train_does(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS[:3] * 2)
    out = tmp_path / "run"
    summary = recipe.run(load_config(None, [
        f"model.name={tiny_model_dir}", f"data.train={data}", f"data.eval={data}", f"output_dir={out}",
        "train.max_steps=2", "train.batch_size=2", "train.progress_bar=false", "eval.at_end=true",
        "generation.max_new_tokens=4",
    ]))
    report = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert (out / "eval.md").is_file() and report["settings"]["samples_scored"] == 6
    assert summary.eval is not None and summary.eval["answer_loss"]["tuned"] is not None
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["eval"] == summary.eval


def test_run_from_python_checks_the_scorer_before_anything_else(tmp_path):
    from lorakit.errors import LorakitError

    missing = tmp_path / "checks.py"
    cfg = load_config(None, ["eval.at_end=true", f"data.train={tmp_path / 'x.jsonl'}",
                             f"data.eval={tmp_path / 'y.jsonl'}", f"eval.scorer={missing}:fn",
                             f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(LorakitError, match=f"file {missing} does not exist"):
        recipe.run(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@needs_embedded
def test_short_embedded_run_lowers_loss(tmp_path, embedded_cache):
    out = tmp_path / "run"
    cfg = load_config(REPO / "examples" / "demo" / "config.yaml", [
        f"output_dir={out}", f"model.cache_dir={embedded_cache}", "data.eval=[]",
        "train.max_steps=6", "train.batch_size=4", "train.logging_steps=1", "train.warmup=0",
        "train.progress_bar=false",
    ])
    recipe.run(cfg)
    seen = losses(out)
    assert len(seen) == 6
    assert sum(seen[-2:]) / 2 < 0.5 * seen[0], seen
