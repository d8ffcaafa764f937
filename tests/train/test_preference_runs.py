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
from tests.tolerance import assert_close_at_scale
from tests.train.helpers import adapter, metrics, run_on_one_thread, tiny_config
from tests.train.test_preference import PAIRS
from tests.train.test_resume import (
    CHILD_ENV, assert_same_adapter, assert_same_totals, start_training, wait_for_checkpoint,
)

STEPS = 20
SETTINGS = {"max_steps": STEPS, "batch_size": 2, "save_steps": 5, "save_total_limit": 2, "logging_steps": 5,
            "learning_rate": 0.005, "progress_bar": False}


def dpo_config(tmp: Path, model_dir: Path, method: str = "dpo") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp / "pairs.jsonl", PAIRS * 3)
    lines = [f"model:\n  name: {model_dir}", f"method: {method}", "preference:\n  beta: 0.2",
             f"data:\n  train: {data}\n  cache_dir: null", f"output_dir: {tmp / 'run'}", "lora:\n  dropout: 0.1",
             "train:", *(f"  {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in SETTINGS.items())]
    path = tmp / "dpo.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


LOGGED = {
    "dpo": {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"},
    "simpo": {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"},
    # KTO reads the pairs as answers, each labelled; its reference point z is logged as kl
    "kto": {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"},
}


@pytest.mark.slow  # starts training subprocesses
@pytest.mark.parametrize("method", ["dpo", "simpo", "kto"])
def test_dpo_sigkill_then_resume_is_exact(tiny_model_dir, tmp_path, method):
    from lorakit.config_file import load_config

    reference_config = dpo_config(tmp_path / "reference", tiny_model_dir, method)
    summary = run_on_one_thread(load_config(reference_config))
    expected = adapter(tmp_path / "reference" / "run")

    config = dpo_config(tmp_path / "killed", tiny_model_dir, method)
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
    assert got["resumed_from"] == str(killed_at) and got["method"] == method
    assert_same_adapter(adapter(run_dir), expected)
    assert_same_totals(got, summary)
    rows = [r for r in metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(5, STEPS + 1, 5))
    assert all(LOGGED[method] <= set(r) for r in rows)


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


def _kto_two_processes_differ_only_in_z(two: list[dict], one: list[dict], keys: list[str]) -> None:
    """KTO's reference point z is estimated from each process's own answers, as TRL estimates it.

    Each rank rotates its own 2 answers into mismatched rows, (x1, y2), (x2, y1), where one process
    with batch 4 rotates all 4: (x1, y4), (x2, y1), (x3, y2), (x4, y3). The mean over ranks
    (``Step.average``, before the clamp) is of other log-ratios, so z, and with it the loss and the
    update, differ from one process's once the policy has moved. What must still agree: step 1,
    where the policy is the reference and z is 0 in both; and at step 2 everything computed from
    the weights alone (log-probs, rewards), since step 1's update was the same.
    """
    assert one[0]["kl"] == two[0]["kl"] == 0.0
    for key in keys:
        assert_close_at_scale(torch.tensor([two[0][key]]), torch.tensor([one[0][key]]), rtol=1e-5, msg=key)
    for key in (k for k in keys if k not in ("loss", "kl")):
        assert_close_at_scale(torch.tensor([two[1][key]]), torch.tensor([one[1][key]]), rtol=1e-5, msg=key)


@pytest.mark.slow  # starts two training processes through torchrun
@pytest.mark.parametrize("method", ["dpo", "orpo", "simpo", "kto"])
def test_two_process_preference_run_matches_one_process_with_twice_the_batch(tiny_model_dir, tmp_path, method):
    """DDP for the preference methods: rows counted over both ranks, logged values reduced over them,
    the same update as one process.

    As tests/train/test_distributed.py does for SFT: both runs draw one seeded permutation of the 16
    pairs and accelerate gives each worker alternate batches of 2, so step k sees the same 4 pairs
    (KTO: the same 4 answers of the 32 it splits the pairs into). fp32 and no dropout, so the only
    difference is the order the gradients are summed in.
    """
    from tests.train.test_distributed import lorakit_train, write_config

    settings = ("train.max_steps=4", "train.warmup=0", "train.save_steps=100", "train.logging_steps=1",
                "train.eval_steps=2", "train.learning_rate=0.005", "lora.dropout=0", "train.precision=fp32")
    overrides = (f"method={method}", "data.cache_dir=null")  # not "section.key" settings: given as --set
    train = write_jsonl(tmp_path / "pairs.jsonl", PAIRS * 4)
    held_out = write_jsonl(tmp_path / "held_out.jsonl", PAIRS * 2)  # 8: two ranks x batch 2, no padding
    config = write_config(tmp_path / "ddp.yaml", tiny_model_dir, train, tmp_path / "run2", *settings,
                          f"data.eval={held_out}", "train.batch_size=2")
    result = lorakit_train(config, "--nproc", "2", *(a for o in overrides for a in ("--set", o)), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    single = tiny_config(tiny_model_dir, tmp_path / "single", *settings, *overrides, "train.batch_size=4",
                         f"data.train={train}", f"data.eval={held_out}")
    run_on_one_thread(single)

    two, one = metrics(tmp_path / "run2"), metrics(single.output_dir)
    two_train, one_train = ([r for r in rows if "loss" in r] for rows in (two, one))
    keys = ["loss", *(k for k in one_train[0] if k.startswith(("rewards/", "logps/", "nll", "log_odds", "kl")))]
    assert [r["step"] for r in two_train] == [1, 2, 3, 4]  # rank 0 alone wrote: no line twice
    assert [r["step"] for r in one_train] == [1, 2, 3, 4]
    if method == "dpo":
        assert two_train[0]["loss"] == pytest.approx(0.6931472, abs=1e-6)  # step 1: the policy is the reference
    if method == "kto":
        return _kto_two_processes_differ_only_in_z(two_train, one_train, keys)
    for key in keys:
        assert_close_at_scale(torch.tensor([r[key] for r in two_train]), torch.tensor([r[key] for r in one_train]),
                              rtol=1e-5, msg=key)
    two_eval, one_eval = ([r for r in rows if "eval_loss" in r] for rows in (two, one))
    assert [r["step"] for r in two_eval] == [r["step"] for r in one_eval] == [2, 4]
    for key in keys:
        assert_close_at_scale(torch.tensor([r[f"eval_{key}"] for r in two_eval]),
                              torch.tensor([r[f"eval_{key}"] for r in one_eval]), rtol=1e-5,
                              msg=f"eval_{key}")
    got, expected = adapter(tmp_path / "run2"), adapter(single.output_dir)
    assert got.keys() == expected.keys()
    for key in got:  # Adam magnifies last-bit differences early on, as in the SFT twin
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-4, msg=key)
    summary = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert summary["method"] == method and summary["steps"] == 4
    assert summary["tokens_seen"] == json.loads((single.output_dir / "summary.json").read_text())["tokens_seen"]
