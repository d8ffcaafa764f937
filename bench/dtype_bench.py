"""What ``precision: auto`` and ``model.dtype`` should mean on this CPU: the four ways to hold and compute.

    python bench/dtype_bench.py                 # SmolLM2, 32 alpaca samples, 2 rounds
    python bench/dtype_bench.py --n 16 --rounds 1

Each setting trains the embedded SmolLM2 with lorakit's defaults otherwise, in its own process
(so peak RSS is its own), in alternating order over the rounds, and the best round is kept. Run it
with OMP_NUM_THREADS=1: speed is then the CPU seconds of training, which the load of other
processes on this shared VM barely moves (wall seconds are reported too). Every adapter is scored the same way: answer-only loss on held-out
alpaca samples, computed with the weights in float32, so a setting cannot buy speed with quality.

Writes bench/results/dtype-<host>-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "alpaca_en.json"
SETTINGS = {
    "fp32": ("float32", "fp32", "float32 weights, float32 compute"),
    "fp32+autocast": ("float32", "bf16", "float32 weights, bf16 autocast"),
    "bf16-weights": ("bfloat16", "fp32", "bf16 frozen weights, float32 LoRA, no autocast"),
    "bf16-weights+autocast": ("bfloat16", "bf16", "bf16 frozen weights, float32 LoRA, bf16 autocast"),
}


class CpuClock(TrainerCallback):
    """CPU seconds this process spends training.

    On this shared VM wall time swings with the neighbours' load; with one thread, the process's
    own CPU time is what the setting costs, and it barely moves with the load.
    """

    seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.process_time()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.process_time() - self.started


def worker(name: str, n: int, held_out: int, out: Path, cache: Path) -> None:
    import torch

    from lorakit.config_file import load_config
    from lorakit.data.samples import Sample
    from lorakit.eval.compare import answer_loss
    from lorakit.infer.session import open_session
    from lorakit.train import recipe
    from lorakit.hardware.memory import peak_rss_bytes

    rows = [r for r in json.loads(SHARED.read_text(encoding="utf-8")) if r["output"].strip()]
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]), encoding="utf-8")
    dtype, precision, _ = SETTINGS[name]
    cfg = load_config(None, [
        f"data.train={data}", f"output_dir={out / 'run'}", f"model.cache_dir={cache}", f"model.dtype={dtype}",
        f"train.precision={precision}", "train.batch_size=4", "train.epochs=1", "train.save_steps=null",
        "train.progress_bar=false", "data.max_length=512", "data.cache_dir=null", "train.logging_steps=1",
    ])
    clock = CpuClock()
    summary = recipe.run(cfg, hooks=[clock])
    rss = peak_rss_bytes()
    run_cfg = out / "run" / "lorakit.yaml"  # score every adapter on the same float32 base
    saved = run_cfg.read_text(encoding="utf-8").replace(f"dtype: {dtype}", "dtype: float32", 1)
    run_cfg.write_text(saved, encoding="utf-8")
    session = open_session(str(out / "run"), cache)
    held = [
        Sample([{"role": "user", "content": (r["instruction"] + "\n\n" + r["input"]).strip()},
                {"role": "assistant", "content": r["output"]}], f"alpaca {i}")
        for i, r in enumerate(rows[n : n + held_out])
    ]
    with torch.inference_mode():
        loss = answer_loss(session, held, 512, 8)
    result = {
        "setting": name, "train_seconds": summary["train_seconds"], "train_cpu_seconds": round(clock.seconds, 2), "loss_tokens": summary["loss_tokens_seen"],
        "loss_tokens_per_second": summary["loss_tokens_per_second"], "tokens_per_second": summary["tokens_per_second"],
        "peak_rss_gib": round(rss / 2**30, 2), "train_loss": summary["train_loss"], "held_out_loss": loss,
    }
    (out / "result.json").write_text(json.dumps(result), encoding="utf-8")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default=",".join(SETTINGS))
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/lorakit").expanduser())
    parser.add_argument("--worker")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.n, args.held_out, args.out, args.cache)
        return
    from lorakit.hardware.cpu import cpu_has_bf16

    names = args.only.split(",")
    best: dict[str, dict] = {}
    scratch = Path(f"/tmp/lorakit-dtype-bench-{int(time.time())}")
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            out = scratch / f"{name}-{round_}"
            out.mkdir(parents=True)
            subprocess.run([sys.executable, __file__, "--worker", name, "--out", str(out), "--n", str(args.n),
                            "--held-out", str(args.held_out), "--cache", str(args.cache)], check=True,
                           stdout=subprocess.DEVNULL, stderr=(out / "log.txt").open("w"))
            result = json.loads((out / "result.json").read_text())
            print(json.dumps({"round": round_, **result}), flush=True)
            if name not in best or result["train_cpu_seconds"] < best[name]["train_cpu_seconds"]:
                best[name] = result
    base = best.get("fp32")
    print(f"\n{cpu_name()} (native bf16: {cpu_has_bf16()}), {args.n} samples, best of {args.rounds} rounds")
    print("| setting | what | train CPU s | wall s | speed vs fp32 (CPU s) | peak RSS GiB | held-out loss |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        r = best[name]
        ratio = f"{base['train_cpu_seconds'] / r['train_cpu_seconds']:.2f}x" if base else ""
        print(f"| {name} | {SETTINGS[name][2]} | {r['train_cpu_seconds']:.1f} | {r['train_seconds']:.1f} | "
              f"{ratio} | {r['peak_rss_gib']:.2f} | {r['held_out_loss']:.4f} |")
    results = HERE / "results" / f"dtype-{platform.node()}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    results.write_text(json.dumps({"cpu": cpu_name(), "native_bf16": cpu_has_bf16(), "n": args.n,
                                   "rounds": args.rounds, "best": best}, indent=2), encoding="utf-8")
    print(f"\nwrote {results}")


if __name__ == "__main__":
    main()
