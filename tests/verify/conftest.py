"""A tiny run trained until it answers and stops (2 s), and copies of it to break on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lorakit.train import recipe
from tests.conftest import make_tiny_model_dir
from tests.infer.conftest import one_torch_thread  # noqa: F401  (autouse: one torch thread here too)
from tests.train.helpers import tiny_config

TRAINING = ("train.max_steps=40", "train.batch_size=4", "train.learning_rate=0.02", "lora.rank=4",
            "train.save_steps=null", "train.logging_steps=100", "train.warmup=0", "data.val_fraction=0.25")


def stoppable_model_dir(folder: Path, family: str = "chatml") -> Path:
    """A tiny random model that can learn to stop. The test tokenizers' pad token is EOS, which for chatml is
    the end-of-turn token, and config.pad_token_id makes its embedding row a frozen zero: with tied
    embeddings its logit would stay 0. A real checkpoint's row is trained; this one is made random."""
    make_tiny_model_dir(folder, family, seed=3)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.get_input_embeddings().weight[model.config.pad_token_id].normal_(std=0.3)
    model.save_pretrained(folder)
    return folder


def train_tiny(root: Path, *overrides: str, family: str = "chatml") -> Path:
    model = stoppable_model_dir(root / "model", family)
    cfg = tiny_config(model, root, *TRAINING, *overrides)
    recipe.run(cfg)
    return Path(cfg.output_dir)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("verify"))


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """The trained run, copied so a test may break it (its base model folder is shared, read only)."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))
