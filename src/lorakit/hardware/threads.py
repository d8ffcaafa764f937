"""How many threads compute: torch's intra-op threads, and none for the tokenizers."""

from __future__ import annotations

import os

import torch

from lorakit.hardware.cpu import physical_cores


def thread_count() -> tuple[int | None, str]:
    """The intra-op threads a training process sets (None: torch's own are kept), and why."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None, f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    if torch.cuda.is_available():
        return None, "torch's own (a GPU computes the steps)"
    # Processes on one machine (lorakit train --nproc N) share its cores.
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    cores = physical_cores()
    return max(1, cores // local), f"{cores} physical cores" + (f" shared by {local} processes" if local > 1 else "")


def set_compute_threads() -> int:
    """Intra-op threads = physical cores unless OMP_NUM_THREADS says otherwise; no tokenizer threads.

    The Rust tokenizers' thread pool would compete with torch's threads during steps; data is
    tokenized before training starts, so it is not needed then.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    count, _ = thread_count()
    if count is not None:
        torch.set_num_threads(count)
    return torch.get_num_threads()
