"""The lorakit command as a user runs it: a real subprocess per command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_tiny_model_dir, needs_embedded, write_jsonl

ROWS = [
    {"instruction": "Say the city of Maria.", "input": "", "output": "Lisbon"},
    {"instruction": "What is two plus two?", "input": "", "output": "It is four."},
]


def lorakit(*args: str, stdin: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lorakit", *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One short real training run, shared by the tests that use its output."""
    tmp_path = tmp_path_factory.mktemp("cli")
    tiny_model_dir = make_tiny_model_dir(tmp_path / "tiny-model")
    data = write_jsonl(tmp_path / "train.jsonl", ROWS * 4)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"model:\n  name: {tiny_model_dir}\ndata:\n  train: train.jsonl\n  eval: train.jsonl\n"
        "train:\n  max_steps: 3\n  batch_size: 4\n  progress_bar: false\n"
        "generation:\n  max_new_tokens: 8\n",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    result = lorakit("train", str(config), "--set", f"output_dir={out}", "--set", "lora.rank=4")
    assert result.returncode == 0, result.stderr
    assert "train_loss" in result.stdout and data.exists()
    assert "trainable_parameters" in result.stdout and "model_memory" in result.stdout
    # train.compile auto: 3 steps never repay a compile, and the table says why not.
    assert re.search(r"compile\W+no \(auto: 1 more step of", result.stdout)
    return out


@pytest.mark.slow
def test_train_writes_peft_adapter(trained_run):
    config = json.loads((trained_run / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    assert (trained_run / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_train_reports_config_errors(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("lora:\n  rnak: 4\n", encoding="utf-8")
    result = lorakit("train", str(config))
    assert result.returncode == 2
    assert "did you mean lora.rank?" in result.stderr


@pytest.mark.slow
def test_train_with_a_folder_or_binary_as_config_says_so(tmp_path):
    folder = lorakit("train", str(tmp_path))
    assert folder.returncode == 2 and "is a folder" in folder.stderr and "Traceback" not in folder.stderr
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)))
    result = lorakit("train", str(binary))
    assert result.returncode == 2 and "is not a text file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_generate_prompt_and_file(trained_run, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say the city of Maria."},
                                                   {"messages": [{"role": "user", "content": "Hi"}]}])
    answers = tmp_path / "answers.jsonl"
    many = lorakit("generate", str(trained_run), "--file", str(prompts), "--out", str(answers),
                   "--max-new-tokens", "6")
    assert many.returncode == 0, many.stderr
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(rows) == 2
    assert all(0 < r["new_tokens"] <= 6 and r["prompt_tokens"] > 3 for r in rows)
    # Batched answers equal the one-at-a-time answer for the same prompt (greedy).
    alone = lorakit("generate", str(trained_run), "--prompt", "Say the city of Maria.", "--max-new-tokens", "6")
    assert alone.stdout.strip() == rows[0]["answer"]


@pytest.mark.slow
def test_chat_through_stdin(trained_run):
    result = lorakit("chat", str(trained_run), "--max-new-tokens", "5", stdin="Hello\n/reset\nAgain\n/exit\nnever\n")
    assert result.returncode == 0, result.stderr
    assert "(conversation cleared)" in result.stdout
    assert result.stdout.count(">>> ") == 4  # Hello, /reset, Again, /exit: "never" is not read


@pytest.mark.slow
def test_generate_on_missing_model_says_how_to_fix(tmp_path):
    result = lorakit("generate", str(tmp_path / "nothing-here"), "--prompt", "hi")
    assert result.returncode == 2
    assert "not found" in result.stderr


@pytest.mark.slow
@needs_embedded
def test_embedded_model_answers_and_chats(embedded_cache):
    result = lorakit("generate", "smollm2-135m-instruct", "--prompt", "What is the capital of France?",
                     "--max-new-tokens", "20", "--cache-dir", str(embedded_cache))
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    chat = lorakit("chat", "smollm2-135m-instruct", "--max-new-tokens", "20", "--cache-dir", str(embedded_cache),
                   stdin="What is the capital of France?\nAnd of Italy?\n/exit\n")
    assert chat.returncode == 0, chat.stderr
    assert "Paris" in chat.stdout and "Rome" in chat.stdout  # the second turn sees the first
