"""Trackers in a real run: each writes offline inside the run folder, and what it logged, read
back with the tracker's own reader, is the loss curve of metrics.jsonl."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from lorakit.train import recipe
from tests.train.helpers import ROWS, metrics, tiny_config

TRACKER_ENV = ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY", "WANDB_RUN_ID",
               "SWANLAB_MODE", "SWANLAB_LOG_DIR", "SWANLAB_PROJECT", "SWANLAB_API_KEY", "SWANLAB_RUN_ID")


def needs(package: str):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"{package} not installed: pip install 'lorakit[track]'")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No tracker settings from the machine, a home of the test's own, and no connection
    out of this machine from this process: any attempt fails the run, and so the test."""
    for var in TRACKER_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    attempts: list = []
    real_connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                local = ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = host == "localhost"
            if not local:
                attempts.append(address)
                raise OSError(f"test: network access to {address} refused")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    before = {k: v for k, v in os.environ.items() if k.startswith(("WANDB_", "SWANLAB_"))}
    yield attempts
    if "wandb" in sys.modules:
        # Stops the wandb-core process this test started and drops its WANDB_SERVICE token
        # (wandb's handle for child processes to reuse the service, set by wandb itself).
        sys.modules["wandb"].teardown()
    after = {k: v for k, v in os.environ.items() if k.startswith(("WANDB_", "SWANLAB_"))}
    assert after == before, "a tracker setting leaked into os.environ"
    assert not attempts, f"tried the network: {attempts}"


def train(model_dir: Path, tmp: Path, trackers: str) -> tuple[Path, dict[int, float]]:
    cfg = tiny_config(model_dir, tmp, "train.max_steps=6", "train.batch_size=2", "train.logging_steps=1",
                      "train.eval_steps=3", "train.save_steps=3",
                      f"train.report_to=[{trackers}]", eval_rows=ROWS[:2])
    recipe.run(cfg)
    return cfg.output_dir, {r["step"]: r["loss"] for r in metrics(cfg.output_dir) if "loss" in r}


def tensorboard_losses(run_dir: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}  # one folder: no stray writer
    events = EventAccumulator(str(folder))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


def wandb_history(run_dir: Path, exit_code: int = 0) -> list[dict]:
    """The run's history rows, read from its offline ``.wandb`` file with wandb's own record schema.

    wandb 0.2x reads these files in its Go core only; the LevelDB-log framing is read with
    swanlab's converter for W&B files (its ``swanlab convert`` reads wandb runs the same way)."""
    import wandb
    from swanlab.converter.wb.wbdatastore import WBDataStoreReader
    from wandb.proto.wandb_internal_pb2 import Record

    # wandb.finish() can return before wandb-core has flushed and closed the run's file (seen on
    # a loaded machine); teardown waits for the core to exit. The next wandb.init starts a new one.
    wandb.teardown()
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows, records = [], []
    with WBDataStoreReader() as reader:
        reader.open(run_file)
        while (data := reader.scan()) is not None:
            records.append(Record())
            records[-1].ParseFromString(data)
            if records[-1].WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in records[-1].history.item})
    assert records[-1].WhichOneof("record_type") == "exit", "the wandb run was not finished"
    assert records[-1].exit.exit_code == exit_code
    return rows


def swanlab_records(run_dir: Path) -> list:
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    (run_file,) = run_dir.glob("swanlab/run-*/run-*.swanlab")
    reader = DataStoreReader()
    reader.open(run_file)
    records = []
    for data in reader:
        record = Record()
        record.ParseFromString(data)
        records.append(record)
    return records


def swanlab_scalars(records: list, key: str) -> dict[int, float]:
    return {r.scalar.step: r.scalar.value.number for r in records
            if r.WhichOneof("record_type") == "scalar" and r.scalar.key == key}


@needs("tensorboard")
def test_tensorboard_logs_the_run_losses(tiny_model_dir, tmp_path, offline):
    run_dir, losses = train(tiny_model_dir, tmp_path, "tensorboard")
    assert sorted(losses) == list(range(1, 7))
    logged = tensorboard_losses(run_dir)
    assert logged.keys() == losses.keys()
    assert all(logged[s] == pytest.approx(losses[s], rel=1e-6) for s in losses)  # event files hold float32


@needs("wandb")
@needs("swanlab")  # its reader of W&B files
def test_wandb_offline_logs_the_run_losses(tiny_model_dir, tmp_path, offline):
    run_dir, losses = train(tiny_model_dir, tmp_path, "wandb")
    rows = wandb_history(run_dir)
    logged = {r["train/global_step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert logged == losses
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["train/global_step"] for r in evals] == [3, 6]
    assert any("train/final_eval_loss" in r for r in rows)  # logged after training, before the run was closed


@pytest.mark.slow
@needs("swanlab")
def test_swanlab_offline_logs_the_run_losses(tiny_model_dir, tmp_path, offline):
    from swanlab.proto.swanlab.run.v1.run_pb2 import RunState

    run_dir, losses = train(tiny_model_dir, tmp_path, "swanlab")
    records = swanlab_records(run_dir)
    assert swanlab_scalars(records, "train/loss") == losses
    assert sorted(swanlab_scalars(records, "eval/loss")) == [3, 6]
    start = next(r.start for r in records if r.WhichOneof("record_type") == "start")
    assert start.project == "lorakit" and start.name == "run"
    finish = [r.finish for r in records if r.WhichOneof("record_type") == "finish"]
    assert [f.state for f in finish] == [RunState.RUN_STATE_FINISHED]  # closed by lorakit, not at exit


@pytest.mark.slow
@needs("swanlab")
def test_ctrl_c_during_a_swanlab_run_still_reaches_lorakits_stop(tiny_model_dir, tmp_path, offline):
    """swanlab.init installs a SIGINT handler that ends its run; lorakit keeps its own in place so
    Ctrl-C still saves a checkpoint and stops cleanly (StopOnInterrupt)."""
    import signal

    from transformers import TrainerCallback

    from lorakit.train.callbacks import StopOnInterrupt

    seen = []

    class Look(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            for signum in (signal.SIGINT, signal.SIGTERM):  # SIGTERM saves a checkpoint too
                seen.append(getattr(signal.getsignal(signum), "__self__", None))

    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=2", "train.report_to=[swanlab]")
    recipe.run(cfg, hooks=[Look()])
    assert len(seen) == 4 and all(isinstance(owner, StopOnInterrupt) for owner in seen)


@pytest.mark.slow
@needs("wandb")
@needs("swanlab")
def test_a_second_run_in_one_process_gets_its_own_tracker_runs(tiny_model_dir, tmp_path, offline):
    first, first_losses = train(tiny_model_dir, tmp_path / "one", "wandb, swanlab")
    second, second_losses = train(tiny_model_dir, tmp_path / "two", "wandb, swanlab")
    for run_dir, losses in ((first, first_losses), (second, second_losses)):
        rows = wandb_history(run_dir)
        assert {r["train/global_step"]: r["train/loss"] for r in rows if "train/loss" in r} == losses
        assert swanlab_scalars(swanlab_records(run_dir), "train/loss") == losses


@pytest.mark.slow
@needs("wandb")
@needs("swanlab")
def test_a_failed_run_closes_its_tracker_runs_marked_failed(tiny_model_dir, tmp_path, offline):
    import swanlab
    import wandb
    from swanlab.proto.swanlab.run.v1.run_pb2 import RunState
    from transformers import TrainerCallback

    class Boom(Exception):
        pass

    class FailAtStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise Boom

    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=6", "train.batch_size=2", "train.logging_steps=1",
                      "train.report_to=[wandb, swanlab]")
    with pytest.raises(Boom):
        recipe.run(cfg, hooks=[FailAtStep2()])
    assert wandb.run is None and not swanlab.has_run()  # none left open for the next run here to log into
    rows = wandb_history(cfg.output_dir, exit_code=1)
    assert [r["train/global_step"] for r in rows if "train/loss" in r] == [1]
    records = swanlab_records(cfg.output_dir)
    assert [r.finish.state for r in records if r.WhichOneof("record_type") == "finish"] == [RunState.RUN_STATE_CRASHED]


def test_missing_tracker_says_how_to_install(monkeypatch, tmp_path):
    from lorakit.train import tracking

    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"'swanlab' but it is not installed: pip install swanlab"):
        tracking.tracker_callbacks(["swanlab"], tmp_path)


@needs("wandb")
@needs("swanlab")
@pytest.mark.parametrize("tracker, mode_var", [("wandb", "WANDB_MODE"), ("swanlab", "SWANLAB_MODE")])
def test_an_online_mode_without_login_stops_with_the_reason(tiny_model_dir, tmp_path, offline, monkeypatch,
                                                            tracker, mode_var):
    from lorakit.train.tracking import TrackerError

    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=2", f"train.report_to=[{tracker}]")
    with monkeypatch.context() as env:
        env.setenv(mode_var, "online")  # the user's own choice, which lorakit leaves alone
        with pytest.raises(TrackerError, match=rf"{tracker} could not start its run \({mode_var}=online is set\)"):
            recipe.run(cfg)
