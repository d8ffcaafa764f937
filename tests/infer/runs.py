"""Run folders for inference tests, made in a second: a tiny base and random LoRA adapters.

The adapters are not trained: peft's ``init_lora_weights=False`` gives them random B
matrices, so each one changes the logits and two adapters can be told apart.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorakit.config import ModelConfig, RunConfig, save_config
from lorakit.infer.session import RUN_CONFIG
from tests.conftest import make_tiny_model_dir


def save_random_adapter(base_dir: Path, folder: Path, seed: int, rank: int = 4) -> Path:
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def make_tiny_run(root: Path, family: str = "chatml") -> tuple[Path, Path]:
    """A run folder as ``lorakit train`` leaves it, and the base model folder it points to."""
    base_dir = make_tiny_model_dir(root / "base", family)
    run = root / "run"
    save_random_adapter(base_dir, run, seed=1)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(run)
    save_config(RunConfig(name="run", model=ModelConfig(name=str(base_dir))), run / RUN_CONFIG)
    return run, base_dir
