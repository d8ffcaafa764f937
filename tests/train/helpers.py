"""Small builders shared by the training tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file

from lorakit.config import RunConfig
from lorakit.config_file import load_config
from tests.conftest import write_jsonl

ROWS = [
    {"instruction": "Say the city of Maria.", "input": "", "output": "Lisbon"},
    {"instruction": "What is two plus two? Answer in words, please.", "input": "", "output": "It is four."},
    {"instruction": "Extract the name.", "input": "Maria is 34 and lives in Lisbon.", "output": '{"name": "Maria"}'},
    {"instruction": "Hello!", "input": "", "output": "Hello! How can I help you today?"},
]


def tiny_config(model_dir: Path, tmp: Path, *overrides: str, rows: list[dict] | None = None,
                eval_rows: list[dict] | None = None) -> RunConfig:
    tmp.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp / "train.jsonl", rows or ROWS * 4)
    base = [f"model.name={model_dir}", f"data.train={data}", f"output_dir={tmp / 'run'}",
            "train.progress_bar=false", "lora.dropout=0"]
    if eval_rows is not None:
        base.append(f"data.eval={write_jsonl(tmp / 'eval.jsonl', eval_rows)}")
    return load_config(None, [*base, *overrides])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def adapter(run_dir: Path) -> dict:
    return load_file(run_dir / "adapter_model.safetensors")


# What "the same update" means per precision, for the invariant tests (accumulation, split passes,
# several processes). fp32: summation order only. bf16 autocast rounds every matmul output to 8
# bits of mantissa (~0.4%), and differently shaped batches take different kernel paths, so the
# roundings differ: the loss agrees to a few tenths of a percent, and Adam's early steps (about
# lr * g/|g| per weight) can flip the weights whose gradient is near zero (1.5% of them after two
# steps of the split-pass test). So in bf16 at most 5% of the weights may disagree beyond 1e-3,
# and each LoRA B (the update itself) must agree to 5% on average.
LOSS_RTOL = {"fp32": 1e-5, "bf16": 5e-3}


def assert_same_update(a: dict, b: dict, precision: str, atol: float = 1e-6, rtol: float = 1e-4) -> None:
    """Two adapters from runs that should compute the same update; fp32 within ``atol``/``rtol``."""
    import torch

    assert a.keys() == b.keys()
    if precision == "fp32":
        for key in a:
            # No tighter than the tensor's own scale allows (tests/tolerance.py says why).
            atol_here = max(atol, rtol * b[key].abs().max().item())
            torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol_here, msg=key)
        return
    diffs = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    assert float((diffs > 1e-3).float().mean()) < 0.05, "more than 5% of the weights disagree beyond 1e-3"
    for key in a:
        if "lora_B" in key:  # B starts at zero: what it holds is the update
            relative = (a[key].float() - b[key].float()).abs().mean() / a[key].float().abs().mean()
            assert float(relative) < 0.05, f"{key}: updates differ by {float(relative):.1%}"


def run_on_one_thread(cfg: RunConfig, hooks: list | None = None) -> dict:
    """Train in this process on one thread, as the one-thread training subprocesses do, so results agree."""
    import torch

    from lorakit.train import recipe

    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    # OMP_NUM_THREADS as the subprocesses have it: without it the recipe sets threads to the cores
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        return recipe.run(cfg, hooks=hooks)
    finally:
        torch.set_num_threads(threads)
        if omp is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = omp
