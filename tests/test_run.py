"""The run folder's one owner: a folder ``train`` wrote reads back through lorakit.run, typed."""

from __future__ import annotations

import json

import pytest

from lorakit.run import (CHECKPOINTS, CONFIG, SAVED_ADAPTER, NotARunError, RunFolder, RunSummary, of_checkpoint,
                         open_run, run_or_model)
from lorakit.train import recipe
from tests.conftest import make_tiny_model_dir
from tests.train.helpers import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = tiny_config(make_tiny_model_dir(tmp / "model"), tmp, "train.max_steps=3", "train.batch_size=4", "train.logging_steps=1",
                      "lora.rank=4", "train.save_steps=2")
    return cfg, recipe.run(cfg)


def test_a_folder_train_wrote_reads_back_as_a_run_summary(trained):
    cfg, returned = trained
    run = open_run(cfg.output_dir)
    summary = run.read_summary()
    assert isinstance(summary, RunSummary) and summary == returned
    assert summary.steps == 3 and summary.base_model == str(cfg.model.name)
    assert 0 < summary.loss_tokens_seen < summary.tokens_seen
    assert 0 < summary.trainable_parameters < summary.total_parameters
    assert summary.data[0]["kept"] == 16  # the data report, as DataReport.as_dict() wrote it
    # The file is the summary's own dict: no key added or lost on the way.
    assert json.loads(run.summary_file.read_text()) == summary.as_dict()
    assert "eval" not in summary.as_dict()  # only a run with eval.at_end has that table


def test_the_folder_answers_for_its_config_metrics_and_files(trained):
    cfg, _ = trained
    run = RunFolder(cfg.output_dir)
    assert run.is_run() and open_run(str(cfg.output_dir)) == run and run.is_finished()
    assert run.read_config() == cfg
    assert [r["step"] for r in run.read_metrics() if "loss" in r] == [1, 2, 3]
    assert run.has_adapter() and run.has_tokenizer() and run.adapter_weights.is_file()
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-3"]


def test_a_folder_without_a_run_is_refused_with_the_reason(tmp_path):
    assert not RunFolder(tmp_path).is_run() and RunFolder(tmp_path).read_summary() is None
    with pytest.raises(NotARunError, match=r"not a lorakit run folder \(no lorakit.yaml\)"):
        open_run(tmp_path)
    with pytest.raises(FileNotFoundError):  # also what callers that predate NotARunError catch
        RunFolder(tmp_path).read_config()


def test_a_command_opens_the_run_it_needs_or_says_what_is_missing(tmp_path):
    killed = tmp_path / "killed"  # a run stopped before it saved its adapter
    killed.mkdir()
    (killed / CONFIG).write_text("seed: 1\n", encoding="utf-8")
    assert open_run(killed).path == killed and run_or_model(str(killed)) == RunFolder(killed)
    with pytest.raises(NotARunError, match=r"killed is not a lorakit run folder \(no adapter_config.json: the run "
                                           r"did not finish saving its adapter\); give a folder written by"):
        open_run(killed, SAVED_ADAPTER)
    with pytest.raises(NotARunError, match=r"gone is not a lorakit run folder \(no such folder\)"):
        open_run(tmp_path / "gone")
    # What is not a folder, or is a model folder, is a model for the loader to resolve.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    assert run_or_model(model) is None and run_or_model("owner/name") is None
    with pytest.raises(NotARunError, match=r"\(no lorakit.yaml or config.json\); give .* a transformers model folder"):
        run_or_model(tmp_path)
    assert of_checkpoint(killed / CHECKPOINTS / "checkpoint-4") == RunFolder(killed)


def test_a_summary_from_another_version_still_reads():
    old = {"steps": 7, "train_loss": 1.5, "eval_loss": None, "tokens_seen": 100, "a_key_from_later": 1}
    summary = RunSummary.from_dict(old)
    assert (summary.steps, summary.train_loss, summary["tokens_seen"]) == (7, 1.5, 100)
    assert summary.skipped_steps == [] and summary.eval is None
    with pytest.raises(KeyError):
        summary["a_key_from_later"]


def test_every_file_a_run_writes_is_named_as_the_runs(trained):
    """--overwrite deletes only RUN_WRITES, so a file train writes that is not named there would block it."""
    from typing import get_args

    from lorakit.config import TrainConfig
    from lorakit.run import TRACKER_FOLDERS

    cfg, _ = trained
    assert RunFolder(cfg.output_dir).others() == []
    (cfg.output_dir / "notes.txt").write_text("mine", encoding="utf-8")
    try:
        assert RunFolder(cfg.output_dir).others() == [cfg.output_dir / "notes.txt"]
    finally:
        (cfg.output_dir / "notes.txt").unlink()
    trackers = get_args(TrainConfig.model_fields["report_to"].annotation)
    assert set(get_args(trackers[0])) == set(TRACKER_FOLDERS)


def test_the_export_record_lists_each_gguf_once_newest_last(tmp_path):
    """What `export gguf` records and `verify RUN` reads back: absolute paths, one entry per file, a file written
    again moving to the end; a damaged record reads as none (verify then checks only what it is given)."""
    run = RunFolder(tmp_path)
    assert run.exports() == []
    run.record_export(tmp_path / "a.gguf")
    run.record_export(tmp_path / "b.gguf")
    run.record_export(tmp_path / "sub" / ".." / "a.gguf")
    assert run.exports() == [(tmp_path / "b.gguf").resolve(), (tmp_path / "a.gguf").resolve()]
    assert run.others() == []  # exports.json is a run's own file: --overwrite may delete it
    (tmp_path / "exports.json").write_text("[{\"gguf\": 3}, \"x\"", encoding="utf-8")
    assert run.exports() == []
