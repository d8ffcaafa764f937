"""The loss curve as a picture: training loss per logging step, eval loss per evaluation."""

from __future__ import annotations

from pathlib import Path

from lorakit.outputs import atomic_output
from lorakit.run import read_metrics


def plot_losses(metrics: Path, picture: Path) -> bool:
    """Write ``picture``; return False (and write nothing) when there is no loss yet."""
    rows = read_metrics(metrics)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe in threads and on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", linewidth=1.5)
    if evals:
        ax.plot(*zip(*evals), label="eval loss", color="tab:orange", marker="o", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(picture.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_output(picture, "the loss plot") as job:
            fig.savefig(job.tmp)  # the same name as picture: matplotlib takes the format from it
    finally:
        plt.close(fig)
    return True
