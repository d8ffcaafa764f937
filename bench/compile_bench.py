"""What train.compile costs and buys on this machine: eager against compiled, cold and warm cache.

    python bench/compile_bench.py                 # 256 alpaca samples (64 steps of 4), SmolLM2
    python bench/compile_bench.py --n 64 --rounds 1

Three kinds of run, each in its own process with the same threads, on the same samples and
settings as bench/train_bench.py's lorakit competitor (e):

- eager:  ``train.compile=false``
- cold:   ``train.compile=true`` with an empty torch compile cache (a first run on a machine)
- warm:   ``train.compile=true`` again, with the cache the cold run filled (later runs)

For each it records the whole training time, the compile's share (the first compiled step's time
beyond the median step), and the median step time, and prints how many steps a run needs before
compiling pays, which is what ``train/auto_compile.py``'s GAIN and COMPILE_SECONDS stand for.
Writes bench/results/compile-<host>-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_bench import ALPHA, BATCH, LR, MAX_LEN, RANK, SEED, messages, samples  # bench/ is on sys.path
from train_report import FLAGS_OF_NOTE

HERE = Path(__file__).resolve().parent


def worker(kind: str, n: int, out: Path, cache: Path) -> None:
    import torch
    from transformers import TrainerCallback

    from lorakit.config_file import load_config
    from lorakit.train import recipe

    class StepClock(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.monotonic() - self.started)

    tmp = Path(tempfile.mkdtemp(prefix=f"compile-{kind}-"))
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": messages(r)}) + "\n" for r in samples(n, 0)), encoding="utf-8")
    cfg = load_config(None, [f"data.train={data}", f"output_dir={tmp / 'run'}", f"model.cache_dir={cache}",
                             f"train.batch_size={BATCH}", f"train.learning_rate={LR}", f"lora.rank={RANK}",
                             f"lora.alpha={ALPHA}", f"data.max_length={MAX_LEN}", "train.progress_bar=false",
                             "train.save_steps=null", f"seed={SEED}",
                             f"train.compile={'false' if kind == 'eager' else 'true'}"])
    clock = StepClock()
    summary = recipe.run(cfg, hooks=[clock])
    out.write_text(json.dumps({
        "kind": kind, "train_seconds": summary["train_seconds"], "steps": summary["steps"],
        "compile_seconds": summary["compile_seconds"], "train_loss": summary["train_loss"],
        "step_seconds": clock.seconds, "median_step_seconds": statistics.median(clock.seconds[2:]),
        "precision": summary["precision"], "threads": torch.get_num_threads(),
    }), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="training samples (steps = n / 4)")
    parser.add_argument("--rounds", type=int, default=1, help="eager/warm rounds after the cold one")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/lorakit").expanduser())
    parser.add_argument("--worker")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.n, args.out, args.cache)
        return
    from lorakit.hardware.cpu import cpu_flag_list, cpu_name

    inductor_cache = Path(tempfile.mkdtemp(prefix="inductor-"))  # empty: the cold run fills it
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)}
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    order = ["eager", "cold", "warm"] + ["eager", "warm"] * (args.rounds - 1)
    results: dict[str, list[dict]] = {}
    started = time.monotonic()
    for kind in order:
        out = HERE / "results" / f".compile-{kind}.json"
        print(f"[{kind}] ...", flush=True)
        subprocess.run([sys.executable, __file__, "--worker", kind, "--n", str(args.n), "--out", str(out),
                        "--cache", str(args.cache)], check=True, env=env)
        results.setdefault(kind, []).append(json.loads(out.read_text()))
        out.unlink()
    best = {k: min(v, key=lambda r: r["train_seconds"]) for k, v in results.items()}
    eager = best["eager"]
    flags = [f for f in cpu_flag_list() if f in FLAGS_OF_NOTE]
    print(f"\n{cpu_name()} ({', '.join(flags)}), {env['OMP_NUM_THREADS']} threads, {eager['precision']}; "
          f"{args.n} samples, {eager['steps']} steps; {(time.monotonic() - started) / 60:.1f} minutes in all\n")
    print("| run | train s | compile s | median step s | step vs eager | train loss |\n|---|---|---|---|---|---|")
    for kind in ("eager", "cold", "warm"):
        r = best[kind]
        ratio = eager["median_step_seconds"] / r["median_step_seconds"]
        cost = "-" if r["compile_seconds"] is None else r["compile_seconds"]
        print(f"| {kind} | {r['train_seconds']:.1f} | {cost} | {r['median_step_seconds']:.2f} | {ratio:.2f}x "
              f"| {r['train_loss']:.4f} |")
    saved = eager["median_step_seconds"] - best["warm"]["median_step_seconds"]
    gain = saved / eager["median_step_seconds"]
    for kind in ("cold", "warm"):
        cost = best[kind]["compile_seconds"] or 0.0
        print(f"{kind}: compiling pays after {cost / saved:.0f} steps of {eager['median_step_seconds']:.2f} s"
              if saved > 0 else f"{kind}: a compiled step is not faster here")
    print(f"gain per step: {100 * gain:.1f}% (auto_compile.GAIN assumes 10%)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = HERE / "results" / f"compile-{platform.node() or 'host'}-{stamp}.json"
    path.write_text(json.dumps({"cpu": cpu_name(), "flags": flags, "threads": env["OMP_NUM_THREADS"],
                                "n": args.n, "gain": gain, "runs": results}, indent=1), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
