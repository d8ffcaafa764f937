"""One owner per run folder; a fresh run never silently writes over an old one; a resume keeps its settings."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from lorakit.run import LOCK
from lorakit.train import checkpoints, recipe
from lorakit.train.run_folder import RunFolderError, RunLock
from tests.train.helpers import metrics, tiny_config

CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SHORT = ("train.max_steps=2", "train.batch_size=2", "train.save_steps=1", "train.logging_steps=1")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_lock_on_a_folder_names_the_holder(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    holder = json.loads((tmp_path / LOCK).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(RunFolderError, match=f"in use by another lorakit run: PID {os.getpid()} on "):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK).exists()
    again = RunLock(tmp_path)
    again.acquire()  # free once released
    again.release()


@pytest.mark.slow
def test_a_stale_lock_is_taken_over(tmp_path):
    lock_file = tmp_path / LOCK
    # Left by a killed run: the kernel dropped its flock, the file still names it.
    lock_file.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "started": 0}))
    lock = RunLock(tmp_path)
    lock.acquire()
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()

    # Still flocked (a descriptor outlived its process) in the name of a dead PID on this host: stale too.
    lock_file.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "started": 0}))
    fd = os.open(lock_file, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        lock = RunLock(tmp_path)
        lock.acquire()
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        os.close(fd)


@pytest.mark.slow
def test_train_on_a_locked_folder_stops_at_once_naming_the_holder(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, *SHORT)
    lock = RunLock(cfg.output_dir)
    cfg.output_dir.mkdir(parents=True)
    lock.acquire()  # this test process is "the other run"
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "lorakit", "train", "--set", f"model.name={tiny_model_dir}",
             "--set", f"data.train={cfg.data.train[0]}", "--set", f"output_dir={cfg.output_dir}"],
            capture_output=True, text=True, timeout=300, env=CHILD_ENV,
        )
        took = time.monotonic() - started
    finally:
        lock.release()
    assert result.returncode == 2, result.stderr
    assert f"in use by another lorakit run: PID {os.getpid()} on {socket.gethostname()}" in " ".join(
        result.stderr.split())
    assert "Traceback" not in result.stderr
    assert not (cfg.output_dir / "lorakit.yaml").exists()  # it stopped before writing anything
    assert took < 60, took  # no model was loaded, no data read (the CLI's imports are most of it)


def test_a_fresh_run_into_a_finished_one_refuses_and_overwrite_replaces_it(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, *SHORT)
    recipe.run(cfg)
    before = (cfg.output_dir / "metrics.jsonl").read_text()
    assert [p.name for _, p in checkpoints.checkpoints(cfg.output_dir / "checkpoints")] == [
        "checkpoint-1", "checkpoint-2"]

    again = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=1", "train.batch_size=1", "train.save_steps=null",
                        "train.logging_steps=1")
    with pytest.raises(RunFolderError, match="already holds a finished run") as refused:
        recipe.run(again)
    assert "--resume" in str(refused.value) and "--overwrite" in str(refused.value)
    assert "output_dir" in str(refused.value)
    assert (cfg.output_dir / "metrics.jsonl").read_text() == before  # untouched

    summary = recipe.run(again, overwrite=True)
    assert summary["steps"] == 1
    assert not (cfg.output_dir / "checkpoints").exists() or not any((cfg.output_dir / "checkpoints").iterdir())
    assert [r["step"] for r in metrics(cfg.output_dir) if "loss" in r] == [1]
    assert not (cfg.output_dir / LOCK).exists()  # released at the end


def test_resume_with_other_settings_names_the_difference(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, *SHORT)
    recipe.run(cfg)
    changed = tiny_config(tiny_model_dir, tmp_path, *SHORT, "train.batch_size=1", "lora.rank=4")
    with pytest.raises(RunFolderError, match="trained with other settings") as refused:
        recipe.run(changed, resume="latest")
    assert "train.batch_size: 2 -> 1" in str(refused.value)
    assert "lora.rank: 16 -> 4" in str(refused.value)
    # Going on for longer, with another cadence, is what resuming is for.
    longer = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=3", "train.batch_size=2", "train.save_steps=2",
                         "train.logging_steps=1")
    assert recipe.run(longer, resume="latest")["steps"] == 3


def test_resume_and_overwrite_together_are_refused(tiny_model_dir, tmp_path):
    with pytest.raises(RunFolderError, match="not both"):
        recipe.run(tiny_config(tiny_model_dir, tmp_path, *SHORT), resume="latest", overwrite=True)


def test_resume_from_a_missing_path_says_so(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, *SHORT)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        recipe.run(cfg, resume=str(tmp_path / "nonexistent"))
    assert not cfg.output_dir.exists()


def test_a_failed_run_leaves_no_empty_folder(tiny_model_dir, tmp_path):
    from lorakit.data.records import DataError

    cfg = tiny_config(tiny_model_dir, tmp_path, *SHORT, f"data.train={tmp_path / 'missing.jsonl'}")
    with pytest.raises(DataError):
        recipe.run(cfg)
    assert not cfg.output_dir.exists()


def test_runs_show_says_a_locked_run_is_running(tmp_path):
    from lorakit.train.run_status import describe_run

    (tmp_path / "lorakit.yaml").write_text("name: run\n", encoding="utf-8")
    assert describe_run(tmp_path)["status"] == "not started"
    lock = RunLock(tmp_path)
    lock.acquire()
    try:
        assert describe_run(tmp_path)["status"] == f"running (PID {os.getpid()} on {socket.gethostname()})"
    finally:
        lock.release()
    assert describe_run(tmp_path)["status"] == "not started"


@pytest.mark.slow
def test_the_launcher_refuses_a_locked_or_occupied_folder_before_starting_workers(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, *SHORT)
    args = [sys.executable, "-m", "lorakit", "train", "--nproc", "2", "--set", f"model.name={tiny_model_dir}",
            "--set", f"data.train={cfg.data.train[0]}", "--set", f"output_dir={cfg.output_dir}"]
    cfg.output_dir.mkdir(parents=True)
    lock = RunLock(cfg.output_dir)
    lock.acquire()
    try:
        locked = subprocess.run(args, capture_output=True, text=True, timeout=300, env=CHILD_ENV)
    finally:
        lock.release()
    assert locked.returncode == 2 and f"PID {os.getpid()}" in " ".join(locked.stderr.split()), locked.stderr
    (cfg.output_dir / "summary.json").write_text("{}", encoding="utf-8")
    occupied = subprocess.run(args, capture_output=True, text=True, timeout=300, env=CHILD_ENV)
    assert occupied.returncode == 2 and "already holds a finished run" in " ".join(occupied.stderr.split())


def tree(folder) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder), to show nothing changed."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def test_overwrite_deletes_only_what_a_run_writes_and_refuses_beside_other_files(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, *SHORT)
    recipe.run(cfg)
    notes = cfg.output_dir / "my_notes.txt"
    notes.write_text("mine", encoding="utf-8")
    before = tree(cfg.output_dir)
    again = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=1", "train.batch_size=2", "train.save_steps=null")
    with pytest.raises(RunFolderError, match=r"--overwrite: .* holds files no lorakit run writes \(my_notes.txt\), "
                                             r"so nothing was deleted"):
        recipe.run(again, overwrite=True)
    assert tree(cfg.output_dir) == before

    # Without the user's file, the run and what lorakit eval and the trackers add to it are replaced.
    notes.unlink()
    for name in ("eval.json", "eval.md"):
        (cfg.output_dir / name).write_text("{}", encoding="utf-8")
    (cfg.output_dir / "tensorboard").mkdir()
    (cfg.output_dir / "tensorboard" / "events.out").write_bytes(b"x")
    assert recipe.run(again, overwrite=True)["steps"] == 1
    assert not any((cfg.output_dir / name).exists() for name in ("eval.json", "eval.md", "tensorboard"))
    assert checkpoints.checkpoints(cfg.output_dir / "checkpoints") == []


def test_a_fresh_run_into_a_folder_of_other_files_is_refused(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, *SHORT)
    cfg.output_dir.mkdir()
    (cfg.output_dir / "notes.txt").write_text("mine", encoding="utf-8")
    (cfg.output_dir / "data").mkdir()
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match=r"holds no lorakit run but is not empty \(data/, notes.txt\).*"
                                                 r"new or empty folder"):
            recipe.run(cfg, overwrite=overwrite)
    assert sorted(p.name for p in cfg.output_dir.iterdir()) == ["data", "notes.txt"]


def test_an_empty_folder_or_one_a_failed_start_left_may_take_a_fresh_run(tmp_path):
    from lorakit.train.run_folder import check_fresh

    check_fresh(tmp_path, overwrite=False)
    (tmp_path / "checkpoints").mkdir()  # created, then the run failed before its first checkpoint
    (tmp_path / LOCK).write_text("", encoding="utf-8")
    check_fresh(tmp_path, overwrite=False)
