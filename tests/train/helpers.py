"""Small builders shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from lorakit.config import RunConfig, load_config
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


def run_on_one_thread(cfg: RunConfig) -> dict:
    """Train in this process on one thread, as the one-thread training subprocesses do, so results agree."""
    import torch

    from lorakit.train import recipe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return recipe.run(cfg)
    finally:
        torch.set_num_threads(threads)
