"""Experiment trackers, attached as Trainer callbacks that write inside the run folder.

TensorBoard writes to ``<run>/tensorboard``, wandb to ``<run>/wandb``, swanlab to
``<run>/swanlab``. wandb and swanlab run offline (no login, no network; ``wandb sync`` and
``swanlab sync`` upload the folder later) unless WANDB_MODE / SWANLAB_MODE says otherwise,
which is the user's own explicit choice. Settings go to each library's ``init`` as arguments,
never into ``os.environ``, so nothing carries over to the next run in the same process.

lorakit starts each tracker's run itself rather than leaving it to the transformers callback:
that callback reuses any run still open (wandb's default outside notebooks), so a second
training in one process would log into the first one's folder; and with swanlab 0.10 its
``get_run() is None`` test raises when no run exists. ``close_trackers`` ends the runs once the
recipe's final evaluation is logged (the callbacks would end them at train end, before it).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import threading
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import SwanLabCallback, TensorBoardCallback, WandbCallback

from lorakit.errors import LorakitError

log = logging.getLogger(__name__)

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab"}
PROJECT = "lorakit"  # the tracker project runs go to, unless WANDB_PROJECT / SWANLAB_PROJECT names one


def _unless_env(var: str, value: str) -> str | None:
    """``value``, or None where the user set ``var``, so the library reads the user's choice itself."""
    return None if os.environ.get(var) else value


class TrackerError(LorakitError, ValueError):
    """A tracker could not start its run (say, an online mode the user chose, with no login)."""


def _start(tracker: str, mode_var: str, init, **settings) -> None:
    try:
        init(**settings)
    except Exception as err:
        mode = os.environ.get(mode_var)
        why = f"{mode_var}={mode} is set" if mode else "it ran offline"
        raise TrackerError(f"train.report_to: {tracker} could not start its run ({why}): {err}") from err


class _KeepSigint:
    """swanlab installs its own Ctrl-C handler, which would end its run before lorakit's
    StopOnInterrupt can save a checkpoint; keep whatever handlers were there (SIGTERM's too)."""

    def __enter__(self):
        main = threading.current_thread() is threading.main_thread()
        self.previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            if handler is not None:
                signal.signal(signum, handler)


class TensorBoardTracker(TensorBoardCallback):
    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        super().__init__(tb_writer=SummaryWriter(log_dir=str(folder)))
        self.logging_dir = str(folder)

    def on_train_end(self, args, state, control, **kwargs):
        pass  # the final evaluation is logged after training ends; close() flushes and closes

    def close(self, ok: bool = True) -> None:
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None


class WandbTracker(WandbCallback):
    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir

    def setup(self, args, state, model, **kwargs):
        if state.is_world_process_zero and not self._initialized:
            _start(
                "wandb", "WANDB_MODE", self._wandb.init, dir=str(self.run_dir), mode=_unless_env("WANDB_MODE", "offline"),
                project=_unless_env("WANDB_PROJECT", PROJECT), name=self.run_dir.name,
                reinit="finish_previous",  # a run left open by an earlier training here is not ours
            )
        super().setup(args, state, model, **kwargs)

    def close(self, ok: bool = True) -> None:
        if self._initialized and self._wandb.run is not None:
            self._wandb.finish(exit_code=0 if ok else 1)


class SwanLabTracker(SwanLabCallback):
    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir

    def setup(self, args, state, model, **kwargs):
        if state.is_world_process_zero and not self._initialized:
            with _KeepSigint():
                _start(
                    "swanlab", "SWANLAB_MODE", self._swanlab.init, log_dir=str(self.run_dir / "swanlab"),
                    mode=_unless_env("SWANLAB_MODE", "offline"), project=_unless_env("SWANLAB_PROJECT", PROJECT),
                    name=self.run_dir.name, reinit=True,  # as for wandb: finish a run an earlier training left open
                )
        super().setup(args, state, model, **kwargs)

    def close(self, ok: bool = True) -> None:
        if self._initialized and self._swanlab.has_run():
            if ok:
                self._swanlab.finish()
            else:
                self._swanlab.finish(state="crashed", error="the lorakit run stopped before it finished")


_TRACKERS = {"tensorboard": lambda run_dir: TensorBoardTracker(run_dir / "tensorboard"),
             "wandb": WandbTracker, "swanlab": SwanLabTracker}


def tracker_callbacks(names: list[str], run_dir: Path) -> list[TrainerCallback]:
    for name in names:
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise TrackerError(f"train.report_to includes {name!r} but it is not installed: "
                               f"pip install {name}  (or: pip install 'lorakit[track]')")
    return [_TRACKERS[name](run_dir) for name in names]


def close_trackers(callbacks: list[TrainerCallback], ok: bool = True) -> None:
    """End each tracker's run (``ok=False``: marked failed); one that fails to close does not stop the rest."""
    for callback in callbacks:
        try:
            callback.close(ok)
        except Exception as err:  # a tracker's own trouble must not hide the run's result or error
            log.warning("could not close the %s tracker: %s", type(callback).__name__, err)
