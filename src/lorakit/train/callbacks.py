"""Trainer hooks: what gets recorded about a run, kept out of the training loop itself."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback


class MetricsLog(TrainerCallback):
    """Append every log and eval event to ``metrics.jsonl``, one JSON object per line.

    A line is written (and flushed) as soon as the Trainer logs, so a run that dies still
    leaves a readable record of how far it got.
    """

    def __init__(self, path: Path):
        self.path = path
        self.started = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": state.epoch, "elapsed_s": round(time.monotonic() - self.started, 3)}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str))})
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
