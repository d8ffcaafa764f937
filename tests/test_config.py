"""The config: YAML plus overrides, unknown keys refused with a suggestion, paths resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.config import ConfigError, load_config, read_saved_config, save_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, "data:\n  train: d.jsonl\nlora:\n  rank: 4\n")
    cfg = load_config(path, ["lora.rank=8", "train.learning_rate=1e-3", "data.eval=[a.jsonl, b.jsonl]"])
    assert cfg.name == "exp" and cfg.resolved_output_dir() == Path("runs/exp")
    assert cfg.lora.rank == 8 and cfg.train.learning_rate == pytest.approx(1e-3)
    # Data paths are relative to the config file, not to where the command runs.
    assert cfg.data.train == [tmp_path / "d.jsonl"]
    assert cfg.data.eval == [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("lora:\n  rnak: 8\n", "unknown key 'lora.rnak' (did you mean lora.rank?)"),
        ("trian:\n  epochs: 2\n", "unknown key 'trian' (did you mean train?)"),
        ("train:\n  batch_size: 0\n", "train.batch_size"),
    ],
)
def test_bad_keys_are_errors_with_suggestions(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert expected in str(info.value)


def test_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["lora.rank"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  train: d.jsonl\n"), ["seed=7"])
    save_config(cfg, tmp_path / "saved.yaml")
    again = read_saved_config(tmp_path / "saved.yaml")
    assert again == cfg


def test_optional_sections_suggest_too(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'model.quantization.bitz' \(did you mean model.quantization.bits\?\)"):
        load_config(write(tmp_path, "model:\n  quantization:\n    bitz: 4\n"))
    cfg = load_config(write(tmp_path, "model:\n  quantization: {bits: 8}\nlora:\n  use_dora: true\n"))
    assert cfg.model.quantization.bits == 8 and cfg.model.quantization.type == "nf4" and cfg.lora.use_dora
