"""Inference tests run torch on one thread.

Generating from a tiny model is a long chain of very small operations; on a busy two-core
machine, torch's thread pool spends more time waking threads than computing (one test went
from 0.2 s to 8 s). One thread also makes the timings of the suite predictable.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
