"""Trainer hooks: what gets recorded and shown about a run, kept out of the loop itself."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

from lorakit.hardware.memory import cuda_peak_bytes, peak_rss_bytes
from lorakit.outputs import writing
from lorakit.train.distributed import max_over_ranks, sum_over_ranks
from lorakit.train.plot import plot_losses
from lorakit.train.trainer import TokenCount


class MetricsLog(TrainerCallback):
    """Append every log and eval event to ``metrics.jsonl``, one JSON object per line.

    A line is written (and flushed) as soon as the Trainer logs, so a run that dies still
    leaves a readable record of how far it got. A resumed run appends to the same file.
    """

    def __init__(self, path: Path, count: TokenCount, fresh: bool = True, perplexity: bool = True):
        self.path = path
        self.count = count
        self.perplexity = perplexity  # of a cross-entropy eval loss; a preference loss has none
        self.started = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            path.write_text("", encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        if "loss" in logs:
            # Every rank logs at the same steps, so every rank joins this sum; each counted its own batches.
            tokens, loss_tokens = sum_over_ranks(self.count.tokens, self.count.loss_tokens)
        if not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": state.epoch, "elapsed_s": round(time.monotonic() - self.started, 3)}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str))})
        if "eval_loss" in row and self.perplexity:
            row["eval_perplexity"] = math.exp(min(row["eval_loss"], 50.0))
        if "loss" in row:
            row["tokens_seen"] = tokens
            row["loss_tokens_seen"] = loss_tokens
            # So far, this process's: a watcher (lorakit ui) shows memory while the run trains.
            row["peak_memory_bytes"] = cuda_peak_bytes() or peak_rss_bytes()
        line = json.dumps(row) + "\n"
        size = self.path.stat().st_size if self.path.exists() else 0
        # A line cut short by a full disk would break every later read of the file: cut it off again.
        with writing("a line of metrics", self.path, undo=lambda: os.truncate(self.path, size),
                     needed=len(line.encode())), self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)


class LossPlot(TrainerCallback):
    """Redraw ``loss.png`` from metrics.jsonl at each evaluation and at the end."""

    def __init__(self, metrics: Path, picture: Path):
        self.metrics = metrics
        self.picture = picture

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_losses(self.metrics, self.picture)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_losses(self.metrics, self.picture)


class RichProgress(TrainerCallback):
    """One progress bar with loss (and a GRPO run's mean reward), learning rate, tokens per second and ETA."""

    def __init__(self, count: TokenCount, console: Console | None = None):
        self.count = count
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self.started = 0.0
        self.tokens_at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}{task.fields[reward]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                           loss="-", reward="", lr="-", tps="-")
        self.started = time.monotonic()
        self.tokens_at_start = self.count.tokens

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        tps = (self.count.tokens - self.tokens_at_start) / elapsed
        self.progress.update(self.task, completed=state.global_step, tps=f"{tps:,.0f}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        fields = {}
        if "loss" in logs:
            fields["loss"] = f"{logs['loss']:.4f}"
        if "reward" in logs:
            fields["reward"] = f"  reward {logs['reward']:.3f}"
        if "learning_rate" in logs:
            fields["lr"] = f"{logs['learning_rate']:.2e}"
        if "eval_loss" in logs:
            self.progress.console.print(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
        if fields:
            self.progress.update(self.task, **fields)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C or SIGTERM (docker stop, Slurm, Kubernetes): finish the current step, save a
    checkpoint, and stop cleanly. ``signal`` is the one that stopped the run.

    A second signal falls through to Python's default and stops at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def interrupted(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        self.uninstall()

    def agree(self) -> None:
        """Take the signal any rank got. Under several processes (a collective: every rank calls
        this at the same point) the ranks then stop at the same step; a rank that stopped alone
        would leave the others waiting in the next step's allreduce, and no checkpoint would finish."""
        self.signal = max_over_ranks(self.signal or 0) or None

    def on_step_end(self, args, state, control, **kwargs):
        self.agree()
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True
        return control
