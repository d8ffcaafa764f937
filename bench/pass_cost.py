"""The cost of one training pass against its length: where microbatch.PassCost comes from (the eager-attention crossover is now probed per machine: hardware/probes.py).

    OMP_NUM_THREADS=2 python bench/pass_cost.py            # SmolLM2, LoRA r16 all-linear, this CPU's precision
    python bench/pass_cost.py --precision fp32 --lengths 64,256,512

For each row length T it times the forward and backward of one pass (one row of T tokens, half
of them answer tokens, answer-only loss) with eager and with sdpa attention, best of --repeat,
in CPU seconds, after a warm-up round, then fits seconds = fixed + per_token × T on the short rows and reports the
fixed cost and the attention term of the long ones in token positions (PassCost's units).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def one_pass(model, head, length: int, bf16: bool) -> float:
    from lorakit.model.loss import answer_only_loss

    ids = torch.randint(100, 40000, (1, length))
    labels = ids.clone()
    labels[:, : length // 2] = -100
    inputs = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(length)[None]}
    def autocast():  # as the Trainer runs a pass: a fresh context each time (one entered twice leaks)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    started = time.process_time()
    with autocast():
        loss = answer_only_loss(model, head, inputs, None, autocast=autocast())
    loss.backward()
    seconds = time.process_time() - started
    model.zero_grad(set_to_none=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="32,64,128,256,512,1024,2048")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--repeat", type=int, default=2, help="measured rounds, after one warm-up round")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    from lorakit.config import LoraConfig, ModelConfig
    from lorakit.model.loader import resolve_model_folder
    from lorakit.model.lora import apply_lora
    from lorakit.hardware.cpu import cpu_name
    from lorakit.train.plan import pick_precision
    from lorakit.model.loss import output_head

    precision = pick_precision(args.precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(resolve_model_folder(ModelConfig()), dtype=dtype)
    model = apply_lora(base, LoraConfig(dropout=0)).train()
    head = output_head(model)
    lengths = [int(x) for x in args.lengths.split(",")]
    seconds: dict[str, dict[int, float]] = {"eager": {}, "sdpa": {}}
    bf16 = precision == "bf16"
    # Rounds alternate, so drift in the machine's speed favours neither; the first round only warms
    # up: a fresh process pays page faults for each new size of activations, which a training run
    # pays once, not at every step (eager's L x L scores made it look 2x slower in a first round).
    for round_no in range(args.repeat + 1):
        if round_no == 1:
            seconds = {"eager": {}, "sdpa": {}}
        for length in lengths:
            for attention in ("eager", "sdpa"):
                base.set_attn_implementation(attention)
                took = one_pass(model, head, length, bf16)
                seconds[attention][length] = min(seconds[attention].get(length, took), took)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, {precision}; CPU seconds of one pass:")
    print("| T | eager | sdpa |\n|---|---|---|")
    for length in lengths:
        print(f"| {length} | {seconds['eager'][length]:.3f} | {seconds['sdpa'][length]:.3f} |")
    best = {t: min(seconds["eager"][t], seconds["sdpa"][t]) for t in lengths}
    short = [t for t in lengths if t <= 512]
    if len(short) >= 2:
        xs, ys = torch.tensor(short, dtype=torch.float64), torch.tensor([best[t] for t in short], dtype=torch.float64)
        per_token, fixed = torch.linalg.lstsq(torch.stack([xs, torch.ones_like(xs)], 1), ys[:, None]).solution[:, 0]
        print(f"fit up to 512: {float(fixed):.3f} s + {1e3 * float(per_token):.2f} ms/token; "
              f"fixed cost = {float(fixed / per_token):.0f} positions")
        for t in lengths:
            if t > 512:
                extra = (best[t] - float(fixed) - float(per_token) * t) / float(per_token)
                print(f"T={t}: {extra:.0f} positions over the line -> attention = T^2 / {t * t / max(extra, 1):.0f}")
    eager_wins = [t for t in lengths if seconds["eager"][t] <= seconds["sdpa"][t]]
    print("eager is faster up to", max(eager_wins) if eager_wins else "never")
    print(json.dumps({"cpu": cpu_name(), "threads": torch.get_num_threads(), "precision": precision,
                      "seconds": seconds}))


if __name__ == "__main__":
    main()
