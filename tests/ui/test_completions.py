"""A GRPO run's sample of completions on its page: read from the folder a real (tiny) run wrote, step guarded."""

from __future__ import annotations

import json

import pytest

from lorakit.run import RunFolder


def written(run: RunFolder, step: int) -> list[dict]:
    lines = (run.completions / f"step-{step:06d}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_the_latest_sample_and_an_earlier_one_are_the_files_the_run_wrote(client, grpo_run):
    latest = client.get("/api/runs/g/completions").json()
    assert latest["steps"] == [1, 2, 3] and latest["step"] == 3
    assert latest["rows"] == written(grpo_run, 3)
    row = latest["rows"][0]  # what the page's table shows of each completion
    assert {"prompt", "completion", "rewards", "reward", "advantage", "truncated", "source"} <= set(row)
    assert set(row["rewards"]) == {"vowels", "skips_some", "length"}
    earlier = client.get("/api/runs/g/completions", params={"step": "2"}).json()
    assert earlier["step"] == 2 and earlier["rows"] == written(grpo_run, 2)
    assert client.get("/api/runs/g/completions", params={"step": "000001"}).json()["rows"] == written(grpo_run, 1)


def test_a_run_without_samples_has_none(client, folders):
    runs, _ = folders
    (runs / "plain").mkdir()
    (runs / "plain" / "lorakit.yaml").write_text("name: plain\n")
    assert client.get("/api/runs/plain/completions").json() == {"steps": [], "step": None, "rows": []}


@pytest.mark.parametrize("step", ["two", "..", "../../etc/passwd", "1/..", "-1", "1e3", "٣"])
def test_a_step_that_is_not_a_number_is_refused_with_one_line(client, folders, step):
    runs, _ = folders
    sample = runs / "s" / "completions"
    sample.mkdir(parents=True)
    (sample / "step-000001.jsonl").write_text('{"step": 1}\n')
    response = client.get("/api/runs/s/completions", params={"step": step})
    assert response.status_code == 400 and "not a step number" in response.json()["error"]


def test_a_step_without_a_sample_names_the_steps_that_have_one(client, folders):
    runs, _ = folders
    sample = runs / "s" / "completions"
    sample.mkdir(parents=True)
    for step in (2, 4):
        (sample / f"step-{step:06d}.jsonl").write_text(json.dumps({"step": step}) + "\n")
    response = client.get("/api/runs/s/completions", params={"step": "3"})
    assert response.status_code == 400 and "steps with one are 2, 4" in response.json()["error"]
    assert client.get("/api/runs/s/completions").json()["rows"] == [{"step": 4}]


@pytest.mark.parametrize("name", ["..", ".ui", "a%2F..%2F.."])
def test_a_run_name_outside_the_runs_folder_is_refused(client, name):
    assert client.get(f"/api/runs/{name}/completions").status_code in (403, 404)
