"""A full disk while a run writes: one lorakit error naming what was written, and no half file or checkpoint."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from transformers import Trainer

from lorakit.config_file import load_config
from lorakit.outputs import OutputWriteError
from lorakit.run import RunFolder, RunSummary
from lorakit.train import recipe
from lorakit.train.callbacks import MetricsLog
from lorakit.train.trainer import TokenCount
from tests.full_disk import disk_fills_after, write_half_then_fail
from tests.train.helpers import tiny_config


def test_a_full_disk_during_a_checkpoint_leaves_no_half_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    def full(self, output_dir):  # the model is saved; the optimizer state finds the disk full
        write_half_then_fail(f"{output_dir}/optimizer.pt", b"\0" * 8192)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full)
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=2", "train.batch_size=2", "train.save_steps=1")
    folder = cfg.output_dir / "checkpoints" / "checkpoint-1"
    with pytest.raises(OutputWriteError) as caught:
        recipe.run(cfg)
    message = str(caught.value)
    assert message.startswith(f"could not write checkpoint 1 to {folder}: the disk is full (how much room it needs "
                              "is not known in advance")
    assert message.endswith("nothing partial was kept")
    assert not folder.exists() and list((cfg.output_dir / "checkpoints").iterdir()) == []
    assert not RunFolder(cfg.output_dir).is_finished()


def test_a_full_disk_while_saving_the_adapter_leaves_no_adapter(tiny_model_dir, tmp_path, monkeypatch):
    import peft.peft_model

    monkeypatch.setattr(peft.peft_model, "safe_save_file", lambda tensors, filename, metadata=None:
                        write_half_then_fail(filename, b"\0" * 8192))
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=1", "train.batch_size=2", "train.save_steps=null")
    what = "the trained adapter and tokenizer"
    with pytest.raises(OutputWriteError, match=f"could not write {what} to {cfg.output_dir}: the disk is full"):
        recipe.run(cfg)
    # the run is there to resume or inspect, but nothing of the adapter: no run reads a half one
    assert sorted(p.name for p in cfg.output_dir.iterdir()) == ["checkpoints", "lorakit.yaml", "metrics.jsonl"]


@pytest.mark.parametrize("write,name,what", [
    (lambda run: run.write_summary(RunSummary(steps=3, train_loss=1.5, eval_loss=None)), "summary.json",
     "the run summary"),
    (lambda run: run.write_config(load_config(None, ["model.name=owner/model"])), "lorakit.yaml", "the run's config"),
])
def test_a_full_disk_while_writing_a_run_file_leaves_no_half_file(tmp_path, monkeypatch, write, name, what):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    disk_fills_after(monkeypatch, 10, under=run.path)
    with pytest.raises(OutputWriteError, match=f"could not write {what} to {run.path / name}: the disk is full "
                                               r"\(it needs about [\d,]+ bytes.*nothing partial was kept"):
        write(run)
    assert list(run.path.iterdir()) == []


def test_a_metrics_line_cut_short_by_a_full_disk_is_taken_back(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, TokenCount(), fresh=True)
    state = SimpleNamespace(is_world_process_zero=True, global_step=1, epoch=0.5)
    log.on_log(None, state, None, logs={"eval_loss": 1.25})
    before = path.read_text()
    disk_fills_after(monkeypatch, 10, under=tmp_path)
    with pytest.raises(OutputWriteError, match="could not write a line of metrics to .*metrics.jsonl"):
        log.on_log(None, state, None, logs={"eval_loss": 1.0})
    assert path.read_text() == before and json.loads(before)["eval_loss"] == 1.25
