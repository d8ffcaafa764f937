"""A checkpoint damaged after it was marked complete is found out before a resume trusts it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.train import checkpoints, recipe
from lorakit.train.checkpoints import CheckpointError
from tests.train.helpers import tiny_config

ARGS = ("train.batch_size=2", "train.save_steps=1", "train.logging_steps=1", "train.save_total_limit=3")
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A finished three-step run with checkpoints 1, 2 and 3: (model, data, run folder)."""
    from tests.conftest import make_tiny_model_dir

    tmp = tmp_path_factory.mktemp("finished")
    model_dir = make_tiny_model_dir(tmp / "model")
    cfg = tiny_config(model_dir, tmp, "train.max_steps=3", *ARGS)
    recipe.run(cfg)
    return model_dir, Path(cfg.data.train[0].path), cfg.output_dir


def copy_of(finished, tmp: Path, *overrides: str):
    """The finished run copied to ``tmp``, and a config that resumes it there (same data, so same settings)."""
    model_dir, data, run = finished
    shutil.copytree(run, tmp / "run")
    return tiny_config(model_dir, tmp, "train.max_steps=3", *ARGS, f"data.train={data}", *overrides)


def harm(checkpoint: Path, how: str, old_marker: bool = False) -> None:
    weights = checkpoint / WEIGHTS
    if how == "deleted":
        weights.unlink()
    else:
        os.truncate(weights, weights.stat().st_size // 2)
    if old_marker:  # a marker from before the files were listed in it
        marker = checkpoints.read_marker(checkpoint)
        del marker["files"]
        (checkpoint / checkpoints.MARKER).write_text(json.dumps(marker), encoding="utf-8")


@pytest.mark.parametrize("how", ["cut", "deleted"])
def test_resume_falls_back_past_a_damaged_checkpoint_and_finishes(finished, tmp_path, caplog, how):
    cfg = copy_of(finished, tmp_path, "train.max_steps=4")
    ckpts = cfg.output_dir / "checkpoints"
    harm(ckpts / "checkpoint-3", how)
    with caplog.at_level("WARNING", logger="lorakit"):
        summary = recipe.run(cfg, resume="latest")
    warned = [r.getMessage() for r in caplog.records if "skipping checkpoint-3" in r.getMessage()]
    expected = "is missing" if how == "deleted" else "bytes, "
    assert len(warned) == 1 and WEIGHTS in warned[0] and expected in warned[0], caplog.text
    assert "resuming from checkpoint-2" in warned[0]
    assert summary["resumed_from"] == str(ckpts / "checkpoint-2") and summary["steps"] == 4
    # Step 3's checkpoint was written again, whole, and marked anew.
    assert checkpoints.damage(ckpts / "checkpoint-3") is None and checkpoints.is_complete(ckpts / "checkpoint-4")


@pytest.mark.parametrize("old_marker", [False, True], ids=["sizes-listed", "old-marker"])
@pytest.mark.parametrize("how", ["cut", "deleted"])
def test_damage_is_found_with_or_without_the_sizes_in_the_marker(finished, tmp_path, how, old_marker):
    checkpoint = tmp_path / "checkpoint-3"
    shutil.copytree(finished[2] / "checkpoints" / "checkpoint-3", checkpoint)
    assert checkpoints.damage(checkpoint) is None
    harm(checkpoint, how, old_marker)
    found = checkpoints.damage(checkpoint)
    assert found is not None and found.startswith(WEIGHTS), found
    if old_marker and how == "cut":  # no size to compare: the safetensors header shows the file is short
        assert "header" in found


def test_other_damage_the_marker_vouches_against(finished, tmp_path):
    checkpoint = tmp_path / "checkpoint-3"
    shutil.copytree(finished[2] / "checkpoints" / "checkpoint-3", checkpoint)
    (checkpoint / "optimizer.pt").unlink()
    assert checkpoints.damage(checkpoint) == "optimizer.pt is missing"
    (checkpoint / checkpoints.MARKER).write_text("{not json", encoding="utf-8")
    assert "does not parse" in checkpoints.damage(checkpoint)


def test_resume_refuses_when_every_checkpoint_is_damaged(finished, tmp_path):
    cfg = copy_of(finished, tmp_path)
    ckpts = cfg.output_dir / "checkpoints"
    for step in (1, 2, 3):
        harm(ckpts / f"checkpoint-{step}", "deleted" if step == 2 else "cut")
    with pytest.raises(CheckpointError, match=r"every complete checkpoint under .* is damaged") as refused:
        recipe.run(cfg, resume="latest")
    assert all(f"checkpoint-{step}: {WEIGHTS}" in str(refused.value) for step in (1, 2, 3))
    assert "--overwrite" in str(refused.value)
    from lorakit.train.run_status import describe_run

    assert describe_run(cfg.output_dir)["checkpoints"][1] == f"checkpoint-2 (damaged: {WEIGHTS} is missing)"


def test_resume_from_a_named_damaged_checkpoint_is_refused_in_one_line(finished, tmp_path):
    cfg = copy_of(finished, tmp_path)
    named = cfg.output_dir / "checkpoints" / "checkpoint-2"
    harm(named, "cut")
    before = (cfg.output_dir / "metrics.jsonl").read_text()
    result = CliRunner().invoke(app, [
        "train", "--set", f"model.name={cfg.model.name}", "--set", f"data.train={cfg.data.train[0].path}",
        "--set", f"output_dir={cfg.output_dir}", *[w for a in ("train.max_steps=3", *ARGS) for w in ("--set", a)],
        "--set", "train.progress_bar=false", "--set", "lora.dropout=0", "--resume", str(named)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --resume {named}: the checkpoint is damaged: {WEIGHTS}")
    assert "--resume alone for the newest intact one" in lines[0]
    assert (cfg.output_dir / "metrics.jsonl").read_text() == before  # nothing trained, nothing trimmed
