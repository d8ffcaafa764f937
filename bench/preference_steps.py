"""Seconds per step of a short DPO or ORPO run on the demo pairs, and where a DPO step's forwards go.

    OMP_NUM_THREADS=1 python bench/preference_steps.py --method dpo --steps 4
    OMP_NUM_THREADS=1 python bench/preference_steps.py --method orpo --steps 4 --profile

Runs ``examples/demo/dpo.yaml`` (the embedded SmolLM2-135M) through the recipe, as ``lorakit train``
does, and prints for each step its wall time and the time of its log-prob forwards: the tuned
model's (with grad) and the reference's (no grad, DPO only). The rest of a step is backward and
the optimizer. ``--profile`` prints torch.profiler's table for the last step. Issue 19's DPO
step cost 10.6 s against ORPO's 8.1 s on a 2-core EPYC, one thread, until ``model.loss.no_logits``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from lorakit.config_file import load_config
from lorakit.train import recipe
from lorakit.train.trainer import LorakitTrainer

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo" / "dpo.yaml"


class StepTimes(TrainerCallback):
    """Times each step and, through a wrapped ``LorakitTrainer.logps``, each log-prob forward in it."""

    def __init__(self, last_step: int, profile: bool):
        self.forwards: list[tuple[bool, float]] = []
        self.last_step, self.profile, self.profiler = last_step, profile, None
        logps = LorakitTrainer.logps

        def timed(trainer, model, inputs):
            started = time.perf_counter()
            result = logps(trainer, model, inputs)
            self.forwards.append((torch.is_grad_enabled(), time.perf_counter() - started))
            return result

        LorakitTrainer.logps = timed

    def on_step_begin(self, args, state, control, **kwargs):
        self.forwards.clear()
        if self.profile and state.global_step == self.last_step - 1:
            self.profiler = torch.profiler.profile()
            self.profiler.__enter__()
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self.started
        tuned = sum(s for grad, s in self.forwards if grad)
        reference = sum(s for grad, s in self.forwards if not grad)
        print(f"step {state.global_step}: {seconds:.2f} s; tuned forwards {tuned:.2f} s, "
              f"reference forwards {reference:.2f} s", flush=True)
        if self.profiler is not None and state.global_step == self.last_step:
            self.profiler.__exit__(None, None, None)
            print(self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=["dpo", "orpo"], default="dpo")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="/tmp/lorakit-preference-steps")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    cfg = load_config(DEMO, [f"method={args.method}", f"train.max_steps={args.steps}", f"output_dir={args.out}",
                             "train.save_steps=null", "train.progress_bar=false", "eval.at_end=false"])
    summary = recipe.run(cfg, hooks=[StepTimes(args.steps, args.profile)], overwrite=True)
    print(f"{args.method}: {summary.steps} steps in {summary.train_seconds} s")


if __name__ == "__main__":
    main()
