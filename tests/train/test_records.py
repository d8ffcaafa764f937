"""What a run leaves behind to look at: metrics, a loss picture, tracker logs, a summary command."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.train import recipe
from tests.train.helpers import ROWS, metrics, tiny_config


def test_metrics_plot_tensorboard_and_runs_show(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=8", "train.batch_size=2", "train.logging_steps=1",
                      "train.save_steps=4", "train.eval_steps=2", "train.report_to=[tensorboard]", eval_rows=ROWS)
    recipe.run(cfg)
    run_dir = cfg.output_dir
    rows = metrics(run_dir)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 6, 8]
    assert all(abs(r["eval_perplexity"] - np.exp(r["eval_loss"])) < 1e-6 for r in evals)
    seen = [r["tokens_seen"] for r in rows if "loss" in r]
    assert all(b > a > 0 for a, b in zip(seen, seen[1:]))  # counted every step

    import matplotlib.image as mpimg

    picture = mpimg.imread(run_dir / "loss.png")
    assert picture.shape[:2] == (450, 800)
    rgb = picture[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05  # not blank
    colours = {tuple(np.round(c, 1)) for c in rgb[:: 97]}
    assert len(colours) > 4  # axes, text and two curves, not one flat colour

    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0

    result = CliRunner().invoke(app, ["runs", "show", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["status"] == "finished" and info["steps"] == 8 and info["evaluations"] == 4
    assert info["best_eval_loss"] == min(r["eval_loss"] for r in evals)


def test_early_stopping_keeps_the_best_adapter(tiny_model_dir, tmp_path):
    # Eval answers contradict the training answers: eval loss falls while the model learns the
    # format and end token, then rises as it learns the training answers.
    train = [{"instruction": f"Name city {i}.", "input": "", "output": "Lisbon is the city."} for i in range(8)]
    held = [{"instruction": f"Name city {i}.", "input": "", "output": "Oslo"} for i in range(8)]
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=60", "train.batch_size=4", "train.logging_steps=1",
                      "train.learning_rate=0.03", "train.warmup=0", "train.scheduler=constant", "lora.rank=8",
                      "train.save_steps=2", "train.eval_steps=2", "train.early_stopping_patience=2",
                      "train.save_total_limit=1", rows=train, eval_rows=held)
    summary = recipe.run(cfg)
    evals = [r["eval_loss"] for r in metrics(cfg.output_dir) if "eval_loss" in r]
    assert summary["steps"] < 60, "early stopping never triggered"
    best = min(evals)
    # Stopped exactly `patience` evaluations after the best one.
    assert evals.index(best) == len(evals) - 3
    # The saved adapter is the best one: evaluating it again gives the best eval loss.
    assert abs(summary["eval_loss"] - best) < 1e-5
    assert summary["best_checkpoint"].endswith(f"checkpoint-{2 * (evals.index(best) + 1)}")


def test_early_stopping_follows_the_methods_value_with_keep_best_or_without(tmp_path):
    """GRPO's eval loss measures nothing of quality: early stopping follows its held-out reward, higher
    being better, whether or not keep_best keeps the best adapter."""
    from lorakit.config import TrainConfig
    from lorakit.train.trainer import training_arguments

    for keep_best in (True, False):
        train = TrainConfig(early_stopping_patience=2, save_steps=4, eval_steps=2, keep_best=keep_best)
        args = training_arguments(train, tmp_path, 0, "fp32", on_gpu=False, has_eval=True, best=("eval_reward", True))
        assert (args.metric_for_best_model, args.greater_is_better) == ("eval_reward", True)
        assert args.load_best_model_at_end is keep_best
    plain = training_arguments(TrainConfig(keep_best=False), tmp_path, 0, "fp32", on_gpu=False, has_eval=True)
    assert plain.metric_for_best_model is None


def test_a_run_that_logs_a_reward_gets_a_reward_panel_beside_the_loss(tmp_path, monkeypatch):
    """GRPO's loss hovers about 0 whatever the answers are worth: its picture also shows the reward of the
    sampled answers and the held-out reward, step by step, in a second panel."""
    import matplotlib.figure

    from lorakit.train.plot import plot_losses

    rows = [{"step": 1, "loss": 0.01, "reward": 0.1}, {"step": 2, "loss": -0.02, "reward": 0.6},
            {"step": 2, "eval_loss": 0.0, "eval_reward": 0.5}, {"step": 3, "loss": 0.0, "reward": 0.9}]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k))
    assert plot_losses(tmp_path / "run" / "metrics.jsonl", tmp_path / "run" / "loss.png")
    loss_axes, reward_axes = drawn[0].axes
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in reward_axes.lines}
    assert curves == {"reward (sampled answers)": ([1, 2, 3], [0.1, 0.6, 0.9]), "eval reward (held out)": ([2], [0.5])}
    assert {line.get_label() for line in loss_axes.lines} == {"train loss", "eval loss"}
    import matplotlib.image as mpimg

    assert mpimg.imread(tmp_path / "run" / "loss.png").shape[:2] == (450, 1600)
