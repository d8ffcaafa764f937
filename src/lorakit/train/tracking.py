"""Experiment trackers, attached as Trainer callbacks with folders inside the run.

TensorBoard writes to ``<run>/tensorboard``. wandb and swanlab are put in their offline
modes unless the user already chose a mode, so a run never blocks on a login or a network.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from transformers import TrainerCallback

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab"}


def tracker_callbacks(names: list[str], run_dir: Path) -> list[TrainerCallback]:
    callbacks: list[TrainerCallback] = []
    for name in names:
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise ValueError(f"train.report_to includes {name!r} but it is not installed: pip install {name}")
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            from transformers.integrations import TensorBoardCallback

            callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_dir / "tensorboard"))))
        elif name == "wandb":
            # The tracker libraries read their mode from the environment; we set it, never read it.
            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_DIR", str(run_dir))
            from transformers.integrations import WandbCallback

            callbacks.append(WandbCallback())
        else:
            os.environ.setdefault("SWANLAB_MODE", "offline")
            os.environ.setdefault("SWANLAB_LOG_DIR", str(run_dir / "swanlab"))
            from transformers.integrations import SwanLabCallback

            callbacks.append(SwanLabCallback())
    return callbacks
