"""The seed recipes (examples/seeds) end to end through the CLI, against the stand-in hub.

Each config runs unchanged but for step counts, batch size, where the tiny stand-in data lies and
the token cache: the stand-in hub serves tiny random models under the real ids. After training,
the hub is stopped, and generate, merge and export still work (and one seed trains a second
time): the base comes from the cache, and the stub's request count shows nothing more was fetched.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import yaml

from lorakit.config_file import load_config
from tests.conftest import write_jsonl
from tests.seedrepos import write_alpaca_zh_disk

SEEDS = Path(__file__).resolve().parents[1] / "examples" / "seeds"
HAS_SWANLAB = importlib.util.find_spec("swanlab") is not None
# config: the hub model it names
CASES = {
    "000-falcon-alpaca": "tiiuae/falcon-3b",
    "000-tinyllama-alpaca": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "001-bloom-alpaca-zh": "Langboat/bloom-1b4-zh",
    "002-llama32-bnb4-pirate": "unsloth/Llama-3.2-1B-Instruct-bnb-4bit",
    "003-qwen3-huanhuan-swanlab": "Qwen/Qwen3-4B-Instruct-2507",
    "004-phi3-yoda-qlora": "microsoft/Phi-3-mini-4k-instruct",
}
SECOND_RUN = "000-tinyllama-alpaca"


def lorakit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorakit", *args], capture_output=True, text=True, timeout=600,
                          env=env)


def overrides(seed: str, out: Path, data_dir: Path, swanlab: bool = False) -> list[str]:
    """What the test changes: steps, batch, where the tiny data is, the token cache, and trackers.

    Seed 003 logs to swanlab only in its own test (``swanlab``), so a tracker problem does not hide the rest.
    """
    sets = [f"output_dir={out}", "train.max_steps=2", "train.batch_size=2", "train.progress_bar=false",
            "data.cache_dir=null"]
    if seed.startswith("001"):
        sets.append(f"data.train={write_alpaca_zh_disk(data_dir / 'alpaca_data_zh')}")
    if seed.startswith("003"):
        rows = [{"instruction": "你是谁？", "input": "", "output": "家父是大理寺少卿甄远道。"}] * 6
        sets.append(f"data.train={write_jsonl(data_dir / 'huanhuan.jsonl', rows)}")
        if not (swanlab and HAS_SWANLAB):
            sets.append("train.report_to=[]")
    return [a for s in sets for a in ("--set", s)]


def test_every_seed_config_is_valid_and_names_its_hub_model():
    assert sorted(p.stem for p in SEEDS.glob("*.yaml")) == sorted(CASES)
    for seed, model in CASES.items():
        cfg = load_config(SEEDS / f"{seed}.yaml")
        assert cfg.model.name == model and cfg.train.max_steps != 2
    pirate = load_config(SEEDS / "002-llama32-bnb4-pirate.yaml")
    assert pirate.data.train[0].path == "Peyton3995/dolly-15k-mistral-pirate" and pirate.model.quantization is None
    assert load_config(SEEDS / "003-qwen3-huanhuan-swanlab.yaml").train.report_to == ["swanlab"]
    phi3 = load_config(SEEDS / "004-phi3-yoda-qlora.yaml")
    assert phi3.model.quantization.double_quant and phi3.model.quantization.type == "nf4"


@pytest.mark.slow
@pytest.mark.parametrize("seed", list(CASES))
def test_seed_trains_generates_merges_and_exports_from_the_hub(seed, hub, tmp_path):
    model = CASES[seed]
    run = tmp_path / "run"
    result = lorakit("train", str(SEEDS / f"{seed}.yaml"), *overrides(seed, run, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "adapter_model.safetensors").is_file()
    assert yaml.safe_load((run / "lorakit.yaml").read_text())["model"]["name"] == model
    fetched = hub.fetched()
    assert "config.json" in fetched and any(f.endswith(".safetensors") for f in fetched)

    # From here on the base comes from the cache: the hub is gone.
    count = hub.requests
    hub.stop()
    answer = lorakit("generate", str(run), "--prompt", "What is two plus two?", "--max-new-tokens", "4")
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert "new tokens" in answer.stderr

    merged = tmp_path / "merged"
    result = lorakit("merge", str(run), "--out", str(merged))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((merged / "config.json").read_text())["model_type"] in (
        "falcon", "llama", "bloom", "qwen3", "phi3")

    result = lorakit("export", "gguf", str(run), "--out", str(tmp_path / "model.gguf"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "model.gguf").stat().st_size > 0 and (tmp_path / "model.Modelfile").is_file()
    if seed == "000-tinyllama-alpaca":
        # transformers 5 builds TinyLlama's tokenizer with a Metaspace "first" prefix, and zephyr prompts
        # start with text: the GGUF's template leads with the space that becomes that "▁" (gguf_vocab.SpaceRule)
        fields = gguf.GGUFReader(tmp_path / "model.gguf").fields
        assert fields["tokenizer.ggml.add_space_prefix"].contents() is False
        assert fields["tokenizer.chat_template"].contents().startswith('{{ " " }}')
    assert hub.requests == count

    if seed == SECOND_RUN:  # one seed trains again, with the hub still stopped: all from the cache
        again = lorakit("train", str(SEEDS / f"{seed}.yaml"), *overrides(seed, tmp_path / "again", tmp_path))
        assert again.returncode == 0, again.stderr[-3000:]
        assert (tmp_path / "again" / "adapter_model.safetensors").is_file()
        assert hub.requests == count


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SWANLAB, reason="swanlab not installed: pip install 'lorakit[track]'")
def test_seed_003_logs_to_swanlab(hub, tmp_path):
    seed = "003-qwen3-huanhuan-swanlab"
    result = lorakit("train", str(SEEDS / f"{seed}.yaml"), *overrides(seed, tmp_path / "run", tmp_path, swanlab=True))
    assert result.returncode == 0, result.stderr[-3000:]
    assert any((tmp_path / "run" / "swanlab").iterdir())


@pytest.mark.slow
def test_offline_with_an_empty_cache_fails_naming_the_model(hub, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty")}
    seed = "004-phi3-yoda-qlora"
    result = lorakit("train", str(SEEDS / f"{seed}.yaml"), *overrides(seed, tmp_path / "run", tmp_path), env=env)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "model 'microsoft/Phi-3-mini-4k-instruct' is not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message and "hf download microsoft/Phi-3-mini-4k-instruct" in message
    assert hub.requests == 0
    assert "Traceback" not in result.stderr
