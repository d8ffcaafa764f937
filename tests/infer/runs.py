"""Run folders for inference tests, made in a second: a tiny base and random LoRA adapters.

The adapters are not trained: peft's ``init_lora_weights=False`` gives them random B
matrices, so each one changes the logits and two adapters can be told apart.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorakit.config import ModelConfig, RunConfig
from lorakit.config_file import save_config
from lorakit.data.encode import IGNORE_INDEX, encode_conversation
from lorakit.data.shapes import Conversation
from lorakit.infer.catalog import Catalog, Choice, open_catalog
from lorakit.run import CONFIG as RUN_CONFIG
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


def make_tiny_catalog(root: Path, extra_name: str = "extra") -> tuple[Catalog, Path, Path]:
    """A catalog of base, ``run`` (the run's adapter) and ``extra_name`` (a second adapter).

    Returns the catalog, the run folder and the second adapter's folder.
    """
    run, base_dir = make_tiny_run(root)
    extra = save_random_adapter(base_dir, root / extra_name, seed=2)
    return open_catalog(str(run), root / "cache", [(extra_name, extra)]), run, extra


def trainer_prompt_ids(choice: Choice, conversation: Conversation) -> list[int]:
    """The tokens training puts before the answer to ``conversation``'s last user turn."""
    answered = conversation + [{"role": "assistant", "content": "An answer."}]
    encoded = encode_conversation(choice.tokenizer, choice.template, answered, max_length=4096,
                                  train_on="last_assistant")
    return encoded.input_ids[: next(k for k, label in enumerate(encoded.labels) if label != IGNORE_INDEX)]
