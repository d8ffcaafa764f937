"""A normal ``lorakit train`` log is lorakit's own: third-party warnings only with --debug."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import make_tiny_model_dir, write_jsonl
from tests.train.helpers import ROWS


@pytest.mark.slow
def test_train_log_holds_no_third_party_noise_unless_debug(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    args = ["train", "--set", f"model.name={model}", "--set", f"data.train={data}", "--set", "train.max_steps=1",
            "--set", "train.batch_size=2", "--set", "train.progress_bar=false"]

    def train(*first: str, out: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "lorakit", *first, *args, "--set", f"output_dir={tmp_path / out}"]
        return subprocess.run(command, capture_output=True, text=True, timeout=600)

    quiet, debug = train(out="quiet"), train("--debug", out="debug")
    assert quiet.returncode == debug.returncode == 0, quiet.stderr + debug.stderr
    assert "precision: fp32" in quiet.stderr  # lorakit's own log is there
    # A warning raised inside a dependency names its file; none reaches the normal log.
    assert "site-packages" not in quiet.stderr and "Warning" not in quiet.stderr
    # peft still reads transformers' deprecated is_gradient_checkpointing: with --debug the user sees it.
    assert "is_gradient_checkpointing" in debug.stderr
