"""Run folders built in a second, without a Trainer: base + LoRA with random B, saved like a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorakit.config_file import load_config, save_config
from lorakit.model.adapter import load_run_base
from lorakit.model.lora import apply_lora
from lorakit.model.loader import load_tokenizer, resolve_model_folder
from lorakit.model.tokens import add_tokens
from tests.conftest import make_tiny_model_dir


def make_run_dir(out: Path, model_name: str, *overrides: str, cache_dir: Path | None = None, seed: int = 0) -> Path:
    """A run folder as ``lorakit train`` writes it, with an adapter that visibly changes outputs."""
    args = [f"model.name={model_name}", f"output_dir={out}", "lora.dropout=0", *overrides]
    if cache_dir is not None:
        args.append(f"model.cache_dir={cache_dir}")
    cfg = load_config(None, args)
    tokenizer = load_tokenizer(resolve_model_folder(cfg.model))
    new = add_tokens(tokenizer, cfg.model.special_tokens, cfg.model.pad_token)
    torch.manual_seed(seed)  # A's random start and B's values: the same adapter on every run
    model = apply_lora(load_run_base(cfg.model, tokenizer), cfg.lora, new_tokens=bool(new))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapter do something
                param.normal_(std=0.05)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_config(cfg, out / "lorakit.yaml")
    return out


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", family="chatml", seed=3)


@pytest.fixture(scope="module")
def tiny_run(tiny_llama, tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("run") / "run", str(tiny_llama), "lora.rank=4")
