"""Preference runs write the run folder SFT writes: killed and resumed they end exactly where an
uninterrupted run ends, and a run started from an SFT adapter saves only its own adapter."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lorakit.train import checkpoints, recipe
from tests.conftest import write_jsonl
from tests.train.helpers import adapter, metrics, run_on_one_thread, tiny_config
from tests.train.test_preference import PAIRS
from tests.train.test_resume import (
    CHILD_ENV, assert_same_adapter, assert_same_totals, start_training, wait_for_checkpoint,
)

STEPS = 20
SETTINGS = {"max_steps": STEPS, "batch_size": 2, "save_steps": 5, "save_total_limit": 2, "logging_steps": 5,
            "learning_rate": 0.005, "progress_bar": False}


def dpo_config(tmp: Path, model_dir: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp / "pairs.jsonl", PAIRS * 3)
    lines = [f"model:\n  name: {model_dir}", "method: dpo", "preference:\n  beta: 0.2",
             f"data:\n  train: {data}\n  cache_dir: null", f"output_dir: {tmp / 'run'}", "lora:\n  dropout: 0.1",
             "train:", *(f"  {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in SETTINGS.items())]
    path = tmp / "dpo.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow  # starts training subprocesses
def test_dpo_sigkill_then_resume_is_exact(tiny_model_dir, tmp_path):
    from lorakit.config import load_config

    reference_config = dpo_config(tmp_path / "reference", tiny_model_dir)
    summary = run_on_one_thread(load_config(reference_config))
    expected = adapter(tmp_path / "reference" / "run")

    config = dpo_config(tmp_path / "killed", tiny_model_dir)
    run_dir = tmp_path / "killed" / "run"
    proc = start_training(config)
    wait_for_checkpoint(run_dir / "checkpoints", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be killed"
    killed_at = checkpoints.latest_complete(run_dir / "checkpoints")
    assert int(killed_at.name.split("-")[1]) < STEPS

    resumed = subprocess.run([sys.executable, "-m", "lorakit", "train", str(config), "--resume"],
                             capture_output=True, text=True, timeout=600, env=CHILD_ENV)
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads((run_dir / "summary.json").read_text())
    assert got["resumed_from"] == str(killed_at) and got["method"] == "dpo"
    assert_same_adapter(adapter(run_dir), expected)
    assert_same_totals(got, summary)
    rows = [r for r in metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(5, STEPS + 1, 5))
    assert all({"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(r) for r in rows)


def test_dpo_from_an_sft_run_keeps_that_adapter_as_reference_and_saves_only_its_own(tiny_model_dir, tmp_path):
    sft = tiny_config(tiny_model_dir, tmp_path / "sft", "train.max_steps=3", "train.save_steps=null",
                      "train.learning_rate=0.02")
    recipe.run(sft)
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS * 2)
    dpo = tiny_config(tiny_model_dir, tmp_path / "dpo", "method=dpo", f"model.adapter={sft.output_dir}",
                      f"data.train={data}", f"data.eval={data}", "train.max_steps=4", "train.save_steps=2",
                      "train.eval_steps=2", "train.logging_steps=1", "train.learning_rate=0.02", "data.cache_dir=null")
    summary = recipe.run(dpo)
    out = dpo.output_dir
    first = metrics(out)[0]
    # Step 1: the tuned copy is still the SFT adapter, so it has the reference's log-probs exactly.
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    assert first["loss"] == pytest.approx(0.6931472, abs=1e-6)
    assert summary["steps"] == 4 and summary["eval_perplexity"] is None
    for folder in [out, *(p for _, p in checkpoints.checkpoints(out / "checkpoints"))]:
        assert not (folder / "reference").exists(), folder  # the frozen copy is the SFT run's, not saved again
    # The saved adapter is the SFT one trained further: plain peft loads it on the base.
    tuned = adapter(out)
    start = adapter(sft.output_dir)
    assert tuned.keys() == start.keys() and any(not torch.equal(tuned[k], start[k]) for k in tuned)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out))
