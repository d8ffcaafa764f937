"""train_bench's report: the machine it ran on, a markdown table, and issue 16's goals met or missed by how much."""

from __future__ import annotations

import os
import platform

# Issue 16's goals for lorakit's defaults (e): loss-bearing tokens/s against the notebook recipe (a)
# and the packed hand loop (h); useful FLOP/s as a share of the measured bf16 matmul rate; peak RSS
# against (a); the held-out loss within noise of (a)'s. HELD_OUT_NOISE: the spread of held-out
# losses between competitors that train alike (README: 1.833 to 1.841 across a, b, c, d and e).
SPEED_VS_RECIPE = {"native bf16": 3.0, "AVX2 only": 1.5}
SPEED_VS_HAND_LOOP = 2.0
BF16_SHARE = 0.25
RSS_VS_RECIPE = 0.6
HELD_OUT_NOISE = 0.02
# Variables that keep torch's kernels to a smaller instruction set: with them an AMX machine stands in
# for an AVX2-only one (bf16 then runs emulated, far below float32).
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")
FLAGS_OF_NOTE = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "avx512_vnni", "amx_tile",
                 "amx_bf16", "amx_int8", "amx_fp16")


def machine(gpu: str | None) -> dict:
    import torch

    from lorakit.hardware.cpu import cpu_flag_list, cpu_has_bf16, cpu_name, physical_cores
    from lorakit.hardware.speed import auto_half

    flags = cpu_flag_list()
    return {
        "cpu": cpu_name(), "flags_of_note": [f for f in FLAGS_OF_NOTE if f in flags], "flags": flags,
        "physical_cores": physical_cores(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "native_bf16": cpu_has_bf16(), "lorakit_cpu_precision_auto": auto_half()[0] or "fp32",
        "host": platform.node(), "gpu": gpu,
        "isa_caps": {v: os.environ[v] for v in ISA_CAPS if os.environ.get(v)},
    }


def bf16_is_native(where: dict, peak: dict) -> bool:
    """Native bf16 by the flags and by the measured rates: a capped instruction set makes bf16 slow."""
    return bool(where["native_bf16"]) and peak.get("bfloat16", 0) > peak.get("float32", 0)


def _ratio(x: float, y: float) -> str:
    return f"{x / y:.2f}x" if y else "-"


def table(results: list[dict], gpu: str | None) -> list[str]:
    ok = [r for r in results if "error" not in r]
    ref = next((r for r in ok if r["competitor"] == "e"), None)
    mem = "peak_cuda_gb" if gpu else "peak_rss_gb"
    lines = ["| | competitor | best s | CPU s | loss tok/s | all tok/s | peak " + ("CUDA" if gpu else "RSS")
             + " GB | train loss | held-out loss | % fp32 matmul | % bf16 matmul | lorakit's speed | lorakit's memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ok:
        lines.append(
            f"| {r['competitor']} | {r['description']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['loss_tokens_per_s']:.1f} | {r['tokens_per_s']:.1f} | {r[mem]:.2f} | {r['train_loss']:.3f} | "
            f"{r['eval_loss']:.3f} | {100 * r['share_of_float32_matmul']:.1f}% | "
            f"{100 * r['share_of_bfloat16_matmul']:.1f}% | "
            f"{_ratio(ref['loss_tokens_per_s'], r['loss_tokens_per_s']) if ref else '-'} | "
            f"{_ratio(ref[mem], r[mem]) if ref else '-'} |")
    for r in results:
        if "error" in r:
            lines.append(f"| {r['competitor']} | {r['description']} | failed: see the log above |" + " |" * 10)
    return lines


def _goal(what: str, value: float, target: float, higher: bool, unit: str = "x") -> dict:
    met = value >= target if higher else value <= target
    shown = f"{100 * value:.1f}%" if unit == "%" else f"{value:.2f}{unit}"
    goal = f"{100 * target:.0f}%" if unit == "%" else f"{target:g}{unit}"
    if met:
        verdict = "met"
    elif higher:
        verdict = f"missed: needs {target / value:.2f}x more" if value > 0 else "missed"
    else:
        verdict = f"missed by {value - target:.3g}{'' if unit == '%' else unit}"
    return {"goal": what, "target": goal, "measured": shown, "met": met, "verdict": verdict}


def goals(results: list[dict], where: dict, peak: dict) -> list[dict]:
    by = {r["competitor"]: r for r in results if "error" not in r}
    e, a, h = by.get("e"), by.get("a"), by.get("h")
    if not e:
        return []
    native = bf16_is_native(where, peak)
    kind = "native bf16" if native else "AVX2 only"
    out = []
    if a:
        out.append(_goal(f"loss tok/s vs the recipe (a), {kind}", e["loss_tokens_per_s"] / a["loss_tokens_per_s"],
                         SPEED_VS_RECIPE[kind], True))
        out.append(_goal("peak RSS vs the recipe (a)", e["peak_rss_gb"] / a["peak_rss_gb"], RSS_VS_RECIPE, False))
        out.append(_goal("held-out loss above the recipe's (a)", e["eval_loss"] - a["eval_loss"], HELD_OUT_NOISE,
                         False, unit=""))
    if h and native:
        out.append(_goal("loss tok/s vs the packed hand loop (h)", e["loss_tokens_per_s"] / h["loss_tokens_per_s"],
                         SPEED_VS_HAND_LOOP, True))
    if native:
        out.append(_goal("useful FLOP/s, share of the bf16 matmul rate", e["share_of_bfloat16_matmul"], BF16_SHARE,
                         True, unit="%"))
    return out


def print_report(results: list[dict], peak: dict, where: dict, samples: int, rounds: int, seconds: float,
                 gpu: str | None) -> list[dict]:
    print(f"\n{gpu or where['cpu']} ({', '.join(where['flags_of_note'])}), {where['threads']} threads, "
          f"torch {where['torch']}; lorakit's precision auto here: {where['lorakit_cpu_precision_auto']}"
          + (f"; instruction sets capped: {where['isa_caps']}" if where.get("isa_caps") else ""))
    print(f"matmul 1024x576 by 576x1536: {peak['float32'] / 1e9:.0f} GFLOP/s fp32, "
          f"{peak['bfloat16'] / 1e9:.0f} GFLOP/s bf16; {samples} samples, best of {rounds} rounds, "
          f"{seconds / 60:.1f} minutes in all\n")
    print("\n".join(table(results, gpu)))
    met = goals(results, where, peak)
    if met:
        print("\n| goal | target | measured | verdict |\n|---|---|---|---|")
        for g in met:
            print(f"| {g['goal']} | {g['target']} | {g['measured']} | {g['verdict']} |")
    return met
