"""What a run folder says about its run, finished or still going: for ``lorakit runs show``."""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.train import checkpoints, run_folder
from lorakit.train.plot import read_metrics


def describe_run(folder: Path) -> dict:
    if not (folder / "lorakit.yaml").is_file():
        raise FileNotFoundError(f"{folder} is not a lorakit run folder (no lorakit.yaml)")
    rows = read_metrics(folder / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    ckpts = checkpoints.checkpoints(folder / "checkpoints")
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
        "checkpoints": [f"{p.name}{'' if checkpoints.is_complete(p) else ' (incomplete)'}" for _, p in ckpts],
        "elapsed_s": rows[-1].get("elapsed_s") if rows else None,
    }
    if summary:
        for key in ("steps", "train_loss", "eval_loss", "train_seconds", "tokens_seen", "loss_tokens_seen",
                    "tokens_per_second", "peak_rss_bytes", "precision", "best_checkpoint", "skipped_steps"):
            info[key] = summary.get(key)
    return info
