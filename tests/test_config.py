"""The config: YAML plus overrides, unknown keys refused with a suggestion, paths resolved."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from lorakit.config import ConfigError, RunConfig, resumable
from lorakit.config_file import load_config, read_saved_config, reference, save_config
from tests.conftest import REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, "data:\n  train: d.jsonl\nlora:\n  rank: 4\n")
    cfg = load_config(path, ["lora.rank=8", "train.learning_rate=1e-3", "data.eval=[a.jsonl, b.jsonl]"])
    assert cfg.name == "exp" and cfg.output_dir == Path("runs/exp")
    assert cfg.lora.rank == 8 and cfg.train.learning_rate == pytest.approx(1e-3)
    # Data paths are relative to the config file, not to where the command runs.
    assert [s.path for s in cfg.data.train] == [str(tmp_path / "d.jsonl")]
    assert [s.path for s in cfg.data.eval] == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]


def test_data_sources_weights_hub_names_and_template_file(tmp_path):
    (tmp_path / "local").mkdir()
    path = write(tmp_path, (
        "data:\n  train: [a.jsonl, {path: b.csv, weight: 2}, 'parts/*.jsonl', tatsu-lab/alpaca, hub:x/y, local]\n"
        "  template: tpl/my.jinja\n"
    ))
    data = load_config(path).data
    assert [(s.path, s.weight) for s in data.train] == [
        (str(tmp_path / "a.jsonl"), 1.0), (str(tmp_path / "b.csv"), 2.0), (str(tmp_path / "parts/*.jsonl"), 1.0),
        ("tatsu-lab/alpaca", 1.0), ("hub:x/y", 1.0), (str(tmp_path / "local"), 1.0),
    ]
    assert data.template == str(tmp_path / "tpl" / "my.jinja")
    # A source still reads as its path in text and as a path.
    assert f"{data.train[0]}" == str(tmp_path / "a.jsonl") and Path(data.train[0]) == tmp_path / "a.jsonl"


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["data.eval=e.jsonl", "data.val_fraction=0.1"], "data.eval (held-out files) or data.val_fraction, not both"),
        (["data.eval=[{path: e.jsonl, weight: 2}]"], "without a weight"),
        (["data.val_fraction=1.5"], "data.val_fraction"),
        (["data.train_on=prompts"], "data.train_on"),
    ],
)
def test_bad_data_settings(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("lora:\n  rnak: 8\n", "unknown key 'lora.rnak' (did you mean lora.rank?)"),
        ("trian:\n  epochs: 2\n", "unknown key 'trian' (did you mean train?)"),
        ("train:\n  batch_size: 0\n", "train.batch_size"),
        # Types are strict, and the error says what was given; each was converted before (true to 1, "8" to 8).
        ("lora:\n  rank: true\n", "lora.rank: expected an integer, got true (a boolean)"),
        ("lora:\n  rank: '8'\n", 'lora.rank: expected an integer, got "8" (a string); write it without quotes'),
        ("lora:\n  rank: 8.5\n", "lora.rank: expected an integer, got 8.5 (a decimal number)"),
        ("train:\n  learning_rate: '1e-3'\n",
         'train.learning_rate: expected a number, got "1e-3" (a string); write it without quotes'),
        ("train:\n  learning_rate: true\n", "train.learning_rate: expected a number, got true (a boolean)"),
        ("data:\n  shuffle: 'true'\n", 'data.shuffle: expected true or false, got "true" (a string)'),
        ("data:\n  shuffle: 1\n", "data.shuffle: expected true or false, got 1 (an integer)"),
        ("generation:\n  temperature: false\n", "generation.temperature: expected a number, got false (a boolean)"),
    ],
)
def test_bad_keys_and_values_are_errors_that_say_what_to_write(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["train.max_steps=0"], "train.max_steps: 0 steps would train nothing"),
        (["train.max_steps=-2"], "train.max_steps"),
        (["train.packing=true", "train.micro_batch_tokens=512"],
         "train.packing and train.micro_batch_tokens (512) do not combine"),
    ],
)
def test_bad_train_settings(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert expected in str(info.value)


def test_packing_alone_and_micro_batches_alone_are_fine():
    assert load_config(None, ["train.packing=true"]).train.micro_batch_tokens is None
    assert load_config(None, ["train.packing=true", "train.micro_batch_tokens=0"]).train.packing  # 0: never split
    assert load_config(None, ["train.max_steps=-1"]).train.max_steps == -1


def test_a_folder_or_a_binary_file_as_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give the YAML config file itself"):
        load_config(tmp_path)
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00")
    with pytest.raises(ConfigError, match="is not a text file"):
        load_config(binary)


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


def test_a_symlink_loop_among_the_paths_is_a_config_error_naming_it(tmp_path):
    (tmp_path / "a.jsonl").symlink_to("b")
    (tmp_path / "b").symlink_to("a.jsonl")
    (tmp_path / "loop").symlink_to("loop")
    for key, value, culprit in (("train", "a.jsonl", "a.jsonl"), ("eval", "loop/e.jsonl", "loop")):
        path = write(tmp_path, f"data:\n  train: d.jsonl\n  {key}: {value}\n")
        with pytest.raises(ConfigError, match=f"data.{key}: {tmp_path / culprit} is a symlink loop"):
            load_config(path)
    with pytest.raises(ConfigError, match=f"data.template: {tmp_path / 'loop'} is a symlink loop"):
        load_config(write(tmp_path, "data:\n  template: loop/t.jinja\n"))


def test_an_integer_fills_a_number_and_1e_4_is_a_number(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  learning_rate: 1\n  warmup: 1.0e-2\nlora:\n  alpha: 16\n"))
    assert cfg.train.learning_rate == 1.0 and cfg.train.warmup == 0.01 and cfg.lora.alpha == 16.0
    # YAML 1.1 (PyYAML) reads 1e-4 without a dot as a string; the strict config reads it as YAML 1.2 does.
    assert load_config(write(tmp_path, "train:\n  learning_rate: 1e-4\n")).train.learning_rate == 1e-4
    assert load_config(None, ["train.learning_rate=2E-5"]).train.learning_rate == 2e-5
    assert load_config(None, ["model.cache_dir=some/folder"]).model.cache_dir == Path("some/folder")  # paths: text


@pytest.mark.parametrize("key", ["seed", "data.seed", "generation.seed"])
def test_seeds_range_over_32_bits(key):
    assert load_config(None, [f"{key}={2**32 - 1}"])
    for bad in (2**32, -1):
        with pytest.raises(ConfigError, match=rf"{key}: Input should be"):
            load_config(None, [f"{key}={bad}"])


def test_the_keys_a_resume_may_change_are_marked_on_the_schema_and_documented():
    page = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    documented = page.split("Only these may change on resume:", 1)[1].split("`--resume PATH`", 1)[0]
    listed = set(re.findall(r"`([a-z_.]+)`", documented))
    assert set(resumable()) == listed
    # Each names a key (or a section) the schema has.
    keys = {k.name for k in reference()}
    assert all(k in keys or any(other.startswith(k + ".") for other in keys) for k in resumable())


def test_paths_are_fixed_once_wherever_the_config_comes_from(tmp_path):
    home = Path("~").expanduser()
    for cfg in (RunConfig(name="x", model={"cache_dir": "~/m"}, data={"cache_dir": "~/t"}),
                load_config(None, ["name=x", "model.cache_dir=~/m", "data.cache_dir=~/t"])):
        assert cfg.model.cache_dir == home / "m" and cfg.data.cache_dir == home / "t"
        assert cfg.output_dir == Path("runs/x")
    save_config(load_config(None, ["name=x"]), tmp_path / "c.yaml")
    assert read_saved_config(tmp_path / "c.yaml").output_dir == Path("runs/x")


def test_the_schema_imports_nothing_from_the_file_reader():
    package = REPO / "src" / "lorakit" / "config"
    for module in package.glob("*.py"):
        imported = [n.module for n in ast.walk(ast.parse(module.read_text(encoding="utf-8")))
                    if isinstance(n, ast.ImportFrom) and n.module]
        assert not [m for m in imported if m.startswith("lorakit.") and not m.startswith("lorakit.config.")
                    and m != "lorakit.errors"], module.name
