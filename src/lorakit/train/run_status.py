"""What a run folder says about its run, finished or still going: for ``lorakit runs show``."""

from __future__ import annotations

from pathlib import Path

from lorakit.run import open_run
from lorakit.train import checkpoints, run_folder
from lorakit.verify.report import read_report as read_verify

# The summary's fields that ``runs show`` adds once the run has finished.
SHOWN = ("steps", "train_loss", "eval_loss", "train_seconds", "tokens_seen", "loss_tokens_seen",
         "tokens_per_second", "peak_rss_bytes", "precision", "best_checkpoint", "skipped_steps",
         "compiled_from_step", "compile_seconds")


def _note(checkpoint: Path) -> str:
    """Why a checkpoint cannot be resumed from, if it cannot."""
    if not checkpoints.is_complete(checkpoint):
        return " (incomplete)"
    found = checkpoints.damage(checkpoint)
    return f" (damaged: {found})" if found else ""


def describe_run(folder: Path) -> dict:
    run = open_run(folder)
    rows = run.read_metrics()
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    summary = run.read_summary()
    ckpts = checkpoints.checkpoints(run.checkpoints)
    owner = run_folder.holder(folder)
    if owner is not None:  # a run holds the folder's lock: it is going on now
        status = f"running (PID {owner.get('pid')} on {owner.get('host', '?')})"
    elif summary:
        status = "finished"
    else:
        status = "stopped" if rows or ckpts else "not started"
    info: dict = {
        "folder": str(folder),
        "status": status,
        "last_step": rows[-1]["step"] if rows else 0,
        "last_train_loss": train_rows[-1]["loss"] if train_rows else None,
        "first_train_loss": train_rows[0]["loss"] if train_rows else None,
        "best_eval_loss": min((r["eval_loss"] for r in eval_rows), default=None),
        "evaluations": len(eval_rows),
        "checkpoints": [p.name + _note(p) for _, p in ckpts],
        "elapsed_s": rows[-1].get("elapsed_s") if rows else None,
    }
    if summary:
        for key in SHOWN:
            info[key] = summary[key]
    checked = read_verify(folder)
    if checked is not None:  # lorakit verify's verdicts, one per check
        info["verify"] = checked.verdict
        info["verify_checks"] = [f"{c.name}: {c.verdict}" for c in checked.checks]
    return info
