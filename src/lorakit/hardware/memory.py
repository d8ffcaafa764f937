"""The peak memory figures a run's summary reports."""

from __future__ import annotations

import torch


def peak_rss_bytes() -> int:
    import resource  # Unix only: imported where it is used, so the package imports anywhere

    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cuda_peak_bytes() -> int | None:
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_reserved())
