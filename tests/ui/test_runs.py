"""What the dashboard says of each run: states read from run folders, curves' rows, and the processes it starts."""

from __future__ import annotations

import os
import signal

import pytest

from lorakit.config import RunConfig
from lorakit.run import RunFolder, RunSummary
from lorakit.train.run_folder import RunLock
from lorakit.ui import jobs as jobs_module
from lorakit.ui.guard import UIError
from lorakit.ui.jobs import Jobs
from lorakit.ui.runs import eta_seconds, list_runs, read_rows, total_steps
from tests.conftest import write_jsonl

ROWS = [{"step": 1, "loss": 2.0, "elapsed_s": 1.0, "tokens_seen": 100}, {"step": 2, "loss": 1.5, "elapsed_s": 2.0,
        "tokens_seen": 200, "rewards/margins": 0.3}, {"step": 2, "eval_loss": 1.7, "elapsed_s": 2.5}]


def make_run(runs, name, rows=ROWS, finished=False, checkpoint=False) -> RunFolder:
    run = RunFolder(runs / name)
    run.path.mkdir()
    run.write_config(RunConfig(name=name, output_dir=run.path, method="dpo" if name == "pref" else "sft"))
    write_jsonl(run.metrics_file, rows)
    if checkpoint:
        (run.checkpoints / "checkpoint-2").mkdir(parents=True)
    if finished:
        run.write_summary(RunSummary(steps=2, train_loss=1.5, eval_loss=1.7))
    return run


def test_each_run_is_listed_with_its_state(folders):
    runs, _ = folders
    jobs = Jobs(runs)
    make_run(runs, "done", finished=True)
    make_run(runs, "halted", checkpoint=True)
    make_run(runs, "broken")
    space = jobs.workspace("broken")
    space.mkdir(parents=True)
    (space / jobs_module.CONFIG).write_text("name: broken\n")
    (space / jobs_module.LOG).write_text("loading\nerror: data.train: x.jsonl line 3 is not JSON\n\n")
    (space / jobs_module.EXIT).write_text("2")
    live = make_run(runs, "live")
    lock = RunLock(live.path)
    lock.acquire()
    (runs / "notes").mkdir()  # a folder that holds no run is not listed
    try:
        states = {s.name: s for s in list_runs(runs, jobs)}
    finally:
        lock.release()
    assert sorted(states) == ["broken", "done", "halted", "live"]
    assert {n: s.state for n, s in states.items()} == {"broken": "failed", "done": "finished", "halted": "stopped",
                                                        "live": "running"}
    assert states["broken"].error == "error: data.train: x.jsonl line 3 is not JSON"
    assert states["halted"].checkpoints and states["halted"].checkpoints[0].startswith("checkpoint-2")
    assert states["done"].last_step == 2 and states["done"].last_train_loss == 1.5
    assert states["broken"].started_here and not states["done"].started_here


def test_the_run_page_and_the_curves_rows(client, folders):
    runs, _ = folders
    make_run(runs, "pref", finished=True)
    page = client.get("/api/runs/pref").json()
    assert page["run"]["state"] == "finished" and page["run"]["method"] == "dpo"
    assert page["summary"]["steps"] == 2 and page["total_steps"] == 2
    assert page["config"]["method"] == "dpo"
    assert client.get("/api/runs/pref/metrics").json() == {"rows": ROWS, "next": 3}
    assert client.get("/api/runs/pref/metrics", params={"since": 2}).json() == {"rows": ROWS[2:], "next": 3}
    assert client.get("/api/runs/nothing").status_code == 404
    download = client.get("/api/runs/pref/config.yaml")
    assert download.status_code == 200 and "method: dpo" in download.text


def test_a_line_still_being_written_waits_for_the_next_read(folders):
    runs, _ = folders
    run = make_run(runs, "r")
    with run.metrics_file.open("a") as fh:
        fh.write('{"step": 3, "lo')
    assert read_rows(run) == ROWS
    assert read_rows(run, since=3) == []


def test_the_steps_to_go_come_from_the_summary_max_steps_or_the_epochs():
    rows = [{"step": 5, "epoch": 0.25, "loss": 1.0}, {"step": 5, "epoch": 0.25, "eval_loss": 1.1}]
    assert total_steps({"train": {"max_steps": 7}}, {"steps": 6}, rows) == 6
    assert total_steps({"train": {"max_steps": 7}}, None, rows) == 7
    assert total_steps({"train": {"max_steps": -1, "epochs": 2.0}}, None, rows) == 40  # 5 steps a quarter epoch
    assert total_steps({"train": {}}, None, []) is None


def test_time_left_at_the_pace_so_far():
    assert eta_seconds(ROWS[:2], 10) == pytest.approx(8.0)  # 1 s a step, 8 steps to go
    assert eta_seconds(ROWS[:2], None) is None and eta_seconds([], 10) is None


class FakeProcess:
    """A training process that runs until it is sent SIGTERM, then ends as lorakit train does (143)."""

    started: list[list[str]] = []

    def __init__(self, command, **kwargs):
        self.command, self.returncode = command, None
        FakeProcess.started.append(command)

    def poll(self):
        return self.returncode

    def send_signal(self, sig):
        assert sig == signal.SIGTERM
        self.returncode = 143

    def wait(self, timeout=None):
        return self.returncode


def test_start_stop_and_resume_run_lorakit_train_on_the_written_config(client, folders, monkeypatch):
    runs, data = folders
    write_jsonl(data / "train.jsonl", [{"prompt": "q", "completion": "a"}])
    FakeProcess.started = []
    monkeypatch.setattr(jobs_module.subprocess, "Popen", FakeProcess)
    form = {"name": "r1", "values": {"data.train": str(data / "train.jsonl"), "train.max_steps": "3"}}
    started = client.post("/api/runs", json=form).json()
    config = runs / ".ui" / "r1" / "config.yaml"
    assert started["command"] == ["lorakit", "train", str(config)]
    assert FakeProcess.started[0][-3:] == ["lorakit", "train", str(config)]
    assert "max_steps: 3" in started["yaml"] and config.read_text() == started["yaml"]
    assert [r["state"] for r in client.get("/api/runs").json()] == ["starting"]
    assert "exists already" in client.post("/api/runs", json=form).json()["error"]  # one run per name
    assert client.post("/api/runs/r1/resume").status_code == 400  # still training
    assert client.post("/api/runs/r1/stop").status_code == 200
    make_run(runs, "r1", rows=ROWS[:1], checkpoint=True)  # what the stopped training left
    listed = client.get("/api/runs").json()
    assert [(r["name"], r["state"]) for r in listed] == [("r1", "stopped")]
    resumed = client.post("/api/runs/r1/resume").json()
    assert resumed["command"] == ["lorakit", "train", str(config), "--resume"]
    assert FakeProcess.started[1][-4:] == ["lorakit", "train", str(config), "--resume=latest"]
    assert client.post("/api/runs/r1/stop").status_code == 200


def test_a_run_started_elsewhere_is_not_the_dashboards_to_resume(client, folders):
    runs, _ = folders
    make_run(runs, "cli", checkpoint=True)
    assert client.get("/api/runs").json()[0]["started_here"] is False
    response = client.post("/api/runs/cli/resume")
    assert response.status_code == 400 and "terminal" in response.json()["error"]
    assert client.post("/api/runs/cli/stop").status_code == 400


def test_merge_and_export_run_the_commands_the_page_shows(client, folders, monkeypatch):
    runs, _ = folders
    run = make_run(runs, "done", finished=True)
    FakeProcess.started = []
    monkeypatch.setattr(jobs_module.subprocess, "Popen", FakeProcess)
    assert client.post("/api/runs/done/tasks/merge").status_code == 400  # no adapter saved yet
    run.adapter_config.write_text("{}")
    shown = client.get("/api/runs/done/commands").json()
    assert shown["merge"]["command"] == f"lorakit merge {runs / 'done'} --out {runs / 'done-merged'}"
    assert shown["export"]["command"].startswith(f"lorakit export gguf {runs / 'done'} --out {runs / 'done-gguf'}")
    assert shown["merge"]["state"] == {"running": False, "exit": None, "log": []}
    for kind in ("merge", "export"):
        assert client.post(f"/api/runs/done/tasks/{kind}").json()["command"] == shown[kind]["command"]
    assert [c[3:] for c in FakeProcess.started] == [shown[k]["command"].split()[1:] for k in ("merge", "export")]
    assert client.get("/api/runs/done/commands").json()["merge"]["state"]["running"] is True
    assert "running already" in client.post("/api/runs/done/tasks/merge").json()["error"]
    assert client.post("/api/runs/done/tasks/rm").status_code == 404
    assert [r["name"] for r in client.get("/api/runs").json()] == ["done"]  # a task's log makes no run


def test_an_uploaded_data_file_is_saved_beside_the_config_and_trains_from_there(client, folders):
    runs, _ = folders
    body = b'{"prompt": "q", "completion": "a"}\n'
    saved = client.put("/api/uploads/up/train.jsonl", content=body).json()["path"]
    assert saved == str(runs / ".ui" / "up" / "train.jsonl")
    assert (runs / ".ui" / "up" / "train.jsonl").read_bytes() == body
    shown = client.post("/api/config", json={"name": "up", "values": {"data.train": saved}})
    assert shown.status_code == 200 and saved in shown.json()["yaml"]
    assert client.get("/api/runs").json() == []  # an upload alone is no run
    for bad in ("..%2Ftrain.jsonl", ".hidden.jsonl", "train.py", "a%2Fb.jsonl"):
        assert client.put(f"/api/uploads/up/{bad}", content=body).status_code in (400, 404), bad
    assert client.put("/api/uploads/..%2Fx/train.jsonl", content=body).status_code in (403, 404)
    assert sorted(p.name for p in (runs / ".ui" / "up").iterdir()) == ["train.jsonl"]


def test_a_run_started_by_an_earlier_dashboard_is_stopped_through_its_lock(folders, monkeypatch):
    runs, _ = folders
    run = make_run(runs, "old")
    jobs = Jobs(runs)  # a new dashboard: it did not start the process itself
    jobs.workspace("old").mkdir(parents=True)
    jobs.config_file("old").write_text("name: old\n")
    killed = []
    monkeypatch.setattr(jobs_module.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    lock = RunLock(run.path)
    lock.acquire()  # held in this process's name, as the training's
    try:
        jobs.stop("old")
    finally:
        lock.release()
    assert killed == [(os.getpid(), signal.SIGTERM)]
    with pytest.raises(UIError, match="not training"):
        jobs.stop("old")  # the lock is free: nothing trains


def test_the_run_page_carries_the_eval_table_and_the_verify_verdicts(client, folders):
    from lorakit.eval.compare import Comparison, MetricRow
    from lorakit.eval.results import table_rows, write_reports
    from lorakit.verify.report import Check, VerifyReport, write_report

    runs, _ = folders
    run = make_run(runs, "scored", finished=True)
    comparison = Comparison([MetricRow("exact_match", "exact match", True, 0.0, 0.9)], [], [])
    write_reports(run.path, comparison)
    write_report(run.path, VerifyReport("scored", "3 prompts", [Check("merge", "pass", "merged equals adapter")]))
    page = client.get("/api/runs/scored").json()
    assert page["eval"] == [list(row) for row in table_rows(comparison)]  # the rows lorakit eval prints
    assert page["info"]["verify"] == "pass" and page["info"]["verify_checks"] == ["merge: pass"]


def test_lorakit_ui_prints_its_url_with_the_token(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lorakit.cli import app as cli
    from lorakit.ui import app as ui_app

    served = []
    monkeypatch.setattr(ui_app, "serve", lambda access, host, port: served.append((access, host, port)))
    monkeypatch.delenv("LORAKIT_UI_KEY", raising=False)
    result = CliRunner().invoke(cli, ["ui", "--runs", str(tmp_path / "runs"), "--port", "7001"])
    assert result.exit_code == 0, result.output
    access, host, port = served[0]
    assert (host, port) == ("127.0.0.1", 7001) and access.runs == (tmp_path / "runs").resolve()
    assert f"http://127.0.0.1:7001/?token={access.token}" in result.stdout
    again = CliRunner().invoke(cli, ["ui", "--runs", str(tmp_path / "runs"), "--host", "0.0.0.0", "--key", "k"])
    assert again.exit_code == 0 and "http://127.0.0.1:7860" in again.stdout and "token=" not in again.stdout
    assert served[1][0].token == "k" and served[1][1] == "0.0.0.0"
