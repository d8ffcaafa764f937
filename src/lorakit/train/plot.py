"""The loss curve as a picture: training loss per logging step, eval loss per evaluation; and for a
method that logs a reward (GRPO, whose loss says nothing of quality: a group's advantages sum to zero),
the reward of the sampled answers and the held-out reward beside it."""

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

    rewards = [(r["step"], r["reward"]) for r in rows if "reward" in r]
    eval_rewards = [(r["step"], r["eval_reward"]) for r in rows if "eval_reward" in r]
    panels = 2 if rewards or eval_rewards else 1
    fig, axes = plt.subplots(1, panels, figsize=(8 * panels, 4.5), dpi=100, squeeze=False)
    _draw(axes[0][0], "loss (answer tokens)", [(train, "train loss", "tab:blue", None),
                                                 (evals, "eval loss", "tab:orange", "o")])
    if panels == 2:
        _draw(axes[0][1], "reward", [(rewards, "reward (sampled answers)", "tab:green", None),
                                     (eval_rewards, "eval reward (held out)", "tab:red", "o")])
    for a in axes[0]:
        a.set_xlabel("optimizer step")
        a.set_title(picture.parent.name)
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    try:
        with atomic_output(picture, "the loss plot") as job:
            fig.savefig(job.tmp)  # the same name as picture: matplotlib takes the format from it
    finally:
        plt.close(fig)
    return True


def _draw(ax, ylabel: str, series: list[tuple[list, str, str, str | None]]) -> None:
    """Each series that has points, as a line: (points, label, colour, marker)."""
    for points, label, colour, marker in series:
        if points:
            ax.plot(*zip(*points), label=label, color=colour, marker=marker, linewidth=1.5)
    ax.set_ylabel(ylabel)
