"""Runs that are killed, interrupted or resumed end exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lorakit.train import checkpoints, recipe
from tests.train.helpers import ROWS, adapter, metrics, run_on_one_thread, tiny_config

STEPS = 40
# One thread: tiny models run faster on one, and the in-process reference and the training
# subprocesses must split their matmuls the same way to agree bit for bit.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ARGS = (f"train.max_steps={STEPS}", "train.batch_size=2", "train.save_steps=5", "train.save_total_limit=2",
        "train.logging_steps=5", "lora.dropout=0.1", "train.learning_rate=0.005")


def start_training(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lorakit", "train", str(config), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV,
    )


def wait_for_checkpoint(folder: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = checkpoints.latest_complete(folder)
        if found is not None:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"training ended before a checkpoint: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def write_config(tmp: Path, model_dir: Path) -> Path:
    cfg = tiny_config(model_dir, tmp, *ARGS)  # writes train.jsonl
    path = tmp / "resume.yaml"
    lines = [f"model:\n  name: {model_dir}", f"data:\n  train: {cfg.data.train[0]}", f"output_dir: {tmp / 'run'}",
             "lora:\n  dropout: 0.1", "train:"]
    lines += [f"  {a.split('=')[0].split('.')[1]}: {a.split('=')[1]}" for a in ARGS if a.startswith("train.")]
    lines += ["  progress_bar: false"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict, dict]:
    """The uninterrupted run every interrupted one must reproduce exactly: model, adapter, summary."""
    from tests.conftest import make_tiny_model_dir

    tmp = tmp_path_factory.mktemp("reference")
    model_dir = make_tiny_model_dir(tmp / "model")
    cfg = tiny_config(model_dir, tmp, *ARGS, "train.progress_bar=false")
    summary = run_on_one_thread(cfg)
    return model_dir, adapter(cfg.output_dir), summary


def assert_same_totals(got: dict, expected: dict) -> None:
    """A resumed run's summary counts the whole run, as the uninterrupted one does."""
    assert got["steps"] == expected["steps"]
    assert got["tokens_seen"] == expected["tokens_seen"]
    assert got["loss_tokens_seen"] == expected["loss_tokens_seen"]
    # The same step losses, added in another grouping: equal to float-sum rounding.
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-6)


def assert_same_adapter(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key in got:
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.slow
def test_sigkill_then_resume_is_exact(reference, tmp_path):
    model_dir, expected, expected_summary = reference
    config = write_config(tmp_path, model_dir)
    run_dir = tmp_path / "run"
    proc = start_training(config)
    first = wait_for_checkpoint(run_dir / "checkpoints", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be killed"
    killed_at = checkpoints.latest_complete(run_dir / "checkpoints")
    assert int(killed_at.name.split("-")[1]) < STEPS and first.name.startswith("checkpoint-")

    # A checkpoint write cut short by the kill: newer, but incomplete, with a torn file.
    torn = run_dir / "checkpoints" / f"checkpoint-{int(killed_at.name.split('-')[1]) + 5}"
    shutil.copytree(killed_at, torn)
    (torn / checkpoints.MARKER).unlink()
    weights = torn / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])

    resumed = subprocess.run([sys.executable, "-m", "lorakit", "train", str(config), "--resume"],
                             capture_output=True, text=True, timeout=600, env=CHILD_ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert "its write never finished" in resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == str(killed_at) and summary["steps"] == STEPS
    assert_same_adapter(adapter(run_dir), expected)
    assert_same_totals(summary, expected_summary)
    steps = [r["step"] for r in metrics(run_dir) if "loss" in r]
    assert steps == list(range(5, STEPS + 1, 5))  # no step logged twice after the resume
    assert not torn.exists()  # the torn leftover was cleaned once a newer checkpoint completed


@pytest.mark.slow
@pytest.mark.parametrize(("stop", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_resume_finishes(reference, tmp_path, stop, exit_code):
    model_dir, expected, expected_summary = reference
    config = write_config(tmp_path, model_dir)
    run_dir = tmp_path / "run"
    proc = start_training(config)
    wait_for_checkpoint(run_dir / "checkpoints", proc)
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == exit_code, stderr
    stderr = " ".join(stderr.split())  # rich wraps long lines
    assert "interrupted at step" in stderr
    assert f"Continue with: lorakit train {config} --resume" in stderr  # the real config, not a placeholder
    step = int(stderr.split("interrupted at step ")[1].split(";")[0])
    assert step < STEPS, "the run finished before the signal"
    saved = run_dir / "checkpoints" / f"checkpoint-{step}"
    assert checkpoints.is_complete(saved)  # saved at the step it stopped, not only at save_steps

    resumed = subprocess.run([sys.executable, "-m", "lorakit", "train", str(config), "--resume", str(saved)],
                             capture_output=True, text=True, timeout=600, env=CHILD_ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_adapter(adapter(run_dir), expected)
    assert_same_totals(json.loads((run_dir / "summary.json").read_text()), expected_summary)


# Trains as `lorakit train CONFIG` does, but kills itself with SIGKILL while checkpoint-10 is being
# written: after its files are written, before the marker that makes it complete.
KILLED_WRITE = """
import os, signal, sys
from lorakit.train import checkpoints
write = checkpoints._fsync_tree
def killed(folder):
    if folder.name == "checkpoint-10":
        os.kill(os.getpid(), signal.SIGKILL)
    write(folder)
checkpoints._fsync_tree = killed
sys.argv = ["lorakit", "train", sys.argv[1]]
from lorakit.cli import main
main()
"""


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_resumes_from_the_one_before(reference, tmp_path):
    model_dir, expected, expected_summary = reference
    config = write_config(tmp_path, model_dir)
    run_dir = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(config)], capture_output=True, text=True,
                            timeout=600, env=CHILD_ENV)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    torn = run_dir / "checkpoints" / "checkpoint-10"
    assert torn.is_dir() and not checkpoints.is_complete(torn)
    assert checkpoints.latest_complete(run_dir / "checkpoints").name == "checkpoint-5"

    resumed = subprocess.run([sys.executable, "-m", "lorakit", "train", str(config), "--resume"],
                             capture_output=True, text=True, timeout=600, env=CHILD_ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert "its write never finished" in resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == str(run_dir / "checkpoints" / "checkpoint-5")
    assert_same_adapter(adapter(run_dir), expected)
    assert_same_totals(summary, expected_summary)


def test_resume_refuses_an_incomplete_checkpoint(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=2")
    partial = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    partial.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="not a complete lorakit checkpoint"):
        recipe.run(cfg, resume=str(partial))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        recipe.run(cfg, resume="latest")


def test_rotation_keeps_the_last_k_and_the_best(tmp_path):
    for step in (10, 20, 30, 40):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        checkpoints.mark_complete(folder, step)
    (tmp_path / "checkpoint-50").mkdir()  # being written
    removed = checkpoints.rotate(tmp_path, keep=2, protect=tmp_path / "checkpoint-10")
    assert sorted(p.name for p in removed) == ["checkpoint-20"]
    assert [p.name for _, p in checkpoints.checkpoints(tmp_path)] == [
        "checkpoint-10", "checkpoint-30", "checkpoint-40", "checkpoint-50"]


def test_a_checkpoint_is_named_as_the_trainer_names_it(tmp_path):
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = checkpoints.step_folder(tmp_path, 7)
    assert folder == tmp_path / f"{PREFIX_CHECKPOINT_DIR}-7"
    folder.mkdir()
    assert checkpoints.checkpoints(tmp_path) == [(7, folder)]


def test_a_checkpoint_without_totals_gives_a_summary_of_the_resumed_steps(tiny_model_dir, tmp_path):
    """Checkpoints written before the totals were kept: the summary says what it can, not a wrong mean."""
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=4", "train.batch_size=2", "train.save_steps=2",
                      "train.logging_steps=1", "train.save_total_limit=3")
    whole = recipe.run(cfg)
    old = cfg.output_dir / "checkpoints" / "checkpoint-2"
    assert set(checkpoints.read_marker(old)) == {"step", "tokens", "loss_tokens", "loss_sum", "compiled_from_step",
                                                 "files"}
    (old / checkpoints.MARKER).write_text(json.dumps({"step": 2}), encoding="utf-8")
    resumed = recipe.run(cfg, resume=str(old))
    after = [r["loss"] for r in metrics(cfg.output_dir) if "loss" in r and r["step"] > 2]
    assert resumed["steps"] == 4 and len(after) == 2
    assert resumed["train_loss"] == pytest.approx(sum(after) / 2, rel=1e-6)
    assert 0 < resumed["tokens_seen"] < whole["tokens_seen"]
