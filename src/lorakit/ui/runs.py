"""What the dashboard shows of each run, read through the run folder's owner (:mod:`lorakit.run`).

The status, losses, checkpoints and verify verdicts are ``lorakit runs show``'s
(:func:`lorakit.train.run_status.describe_run`); this module adds what only the dashboard
knows (how the process it started ended: a failure's ``error:`` line), the curves' rows and an
estimate of the time left.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorakit.run import EVAL_JSON, RunFolder
from lorakit.ui.guard import UIError
from lorakit.ui.jobs import STOPPED_CODES, Jobs

RUNNING, FINISHED, STOPPED, FAILED, STARTING = "running", "finished", "stopped", "failed", "starting"


@dataclass
class RunState:
    name: str
    state: str  # running, finished, stopped, failed, starting (the UI's process is up, training not yet)
    error: str | None = None  # a failed run's error line
    last_step: int = 0
    last_train_loss: float | None = None
    checkpoints: list[str] = field(default_factory=list)
    method: str | None = None
    started_here: bool = False  # the dashboard started it, so it may stop and resume it


def read_rows(run: RunFolder, since: int = 0) -> list[dict]:
    """The metrics rows from ``since`` on; a last line still being written is left for the next read."""
    rows = []
    try:
        lines = run.metrics_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines[since:]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


SAMPLE_FILE = re.compile(r"step-([0-9]+)\.jsonl")  # as GRPO names them: step-000012.jsonl


@dataclass
class CompletionSample:
    """One logging step's sample of GRPO completions, and the steps that have one (to pick another)."""

    steps: list[int]
    step: int | None
    rows: list[dict] = field(default_factory=list)


def sample_files(run: RunFolder) -> dict[int, Path]:
    """The run's samples of completions by step, oldest first."""
    if not run.completions.is_dir():
        return {}
    found = {int(m.group(1)): p for p in run.completions.iterdir() if (m := SAMPLE_FILE.fullmatch(p.name))}
    return dict(sorted(found.items()))


def read_sample(run: RunFolder, step: str | None = None) -> CompletionSample:
    """The sample of ``step`` (digits, as the page sends it), or the latest one when not given.

    The step is only ever looked up among the files found, never joined into a path: a value
    such as ``../x`` is refused before any file is named after it.
    """
    files = sample_files(run)
    steps = list(files)
    if step is None or step == "":
        wanted = steps[-1] if steps else None
    elif step.isascii() and step.isdigit() and len(step) <= 9:
        wanted = int(step)
        if wanted not in files:
            raise UIError(f"no sample of completions for step {wanted}: steps with one are "
                          f"{', '.join(map(str, steps)) or 'none yet'}")
    else:
        raise UIError(f"step {step!r} is not a step number: give the digits of a logged step")
    if wanted is None:
        return CompletionSample(steps, None)
    rows = []
    for line in files[wanted].read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # being written as the page reads it: the rest comes at the next read
            break
    return CompletionSample(steps, wanted, rows)


def state_of(name: str, run: RunFolder, jobs: Jobs) -> RunState | None:
    """The run's state; None for a name that is neither a run nor a process the dashboard started."""
    from lorakit.train.run_status import describe_run

    started_here = jobs.config_file(name).is_file()
    if not run.is_run():  # the dashboard's process is loading the model, or failed before writing its config
        code = jobs.exit_code(name)
        if jobs.running(name):
            return RunState(name, STARTING, started_here=started_here)
        if code is not None and code not in STOPPED_CODES:
            return RunState(name, FAILED, jobs.error_line(name), started_here=started_here)
        return None
    info = describe_run(run.path)
    status = info["status"]
    code = jobs.exit_code(name)
    if status.startswith("running") or jobs.running(name):
        state = RUNNING
    elif status == "finished":
        state = FINISHED
    elif code is not None and code != 0 and code not in STOPPED_CODES:
        state = FAILED
    else:
        state = STOPPED
    try:
        method = run.read_config_as_saved().get("method", "sft")
    except (OSError, ValueError):
        method = None
    return RunState(name, state, jobs.error_line(name) if state == FAILED else None, info["last_step"],
                    info["last_train_loss"], info["checkpoints"], method, started_here)


def list_runs(runs: Path, jobs: Jobs) -> list[RunState]:
    """Every run in the folder, and every run the dashboard is starting, by name."""
    # A link to a folder elsewhere is not listed: the dashboard reads nothing outside the runs folder.
    names = {p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")
             and p.resolve().parent == runs.resolve() and RunFolder(p).is_run()}
    workspace = jobs.workspace("x").parent
    if workspace.is_dir():
        names |= {p.name for p in workspace.iterdir() if p.is_dir()}
    states = [state_of(name, RunFolder(runs / name), jobs) for name in sorted(names)]
    return [s for s in states if s is not None]


def total_steps(config: dict[str, Any], summary: dict[str, Any] | None, rows: list[dict]) -> int | None:
    """The steps the run will take: its summary's when finished, train.max_steps when set, else from its epochs.

    A run of epochs logs how far through them each step is (``epoch``, fractional), so the
    steps of all of them are the last logged step scaled by epochs over that fraction.
    """
    if summary:
        return summary.get("steps")
    train = config.get("train") or {}
    steps = train.get("max_steps", -1)
    if isinstance(steps, int) and steps > 0:
        return steps
    last = next((r for r in reversed(rows) if r.get("step") and r.get("epoch")), None)
    return round(last["step"] * train.get("epochs", 1.0) / last["epoch"]) if last else None


def eta_seconds(rows: list[dict], total: int | None) -> float | None:
    """Time left at the pace so far: steps to go times seconds per step."""
    timed = [r for r in rows if r.get("step") and r.get("elapsed_s") is not None]
    if total is None or not timed:
        return None
    last = timed[-1]
    return max(0.0, (total - last["step"]) * last["elapsed_s"] / last["step"])


def detail(name: str, run: RunFolder, jobs: Jobs) -> dict[str, Any]:
    """A run's page: its state, ``runs show``'s fields, settings, summary, eval table and verify verdicts."""
    from lorakit.eval.results import read_report, table_rows
    from lorakit.train.run_status import describe_run

    state = state_of(name, run, jobs) or RunState(name, STOPPED)
    page: dict[str, Any] = {"run": asdict(state), "info": {}, "config": {}, "summary": None, "eval": None}
    if not run.is_run():
        return page
    page["info"] = describe_run(run.path)
    page["config"] = run.read_config_as_saved()
    summary = run.read_summary()
    page["summary"] = summary.as_dict() if summary else None
    if (run.path / EVAL_JSON).is_file():
        page["eval"] = [list(row) for row in table_rows(read_report(run.path))]
    rows = read_rows(run)
    page["total_steps"] = total_steps(page["config"], page["summary"], rows)
    page["eta_s"] = eta_seconds(rows, page["total_steps"]) if state.state == RUNNING else None
    return page
