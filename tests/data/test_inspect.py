"""`lorakit data inspect`: what will be trained, shown before training, as text and as JSON."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from tests.conftest import make_tiny_model_dir, write_jsonl

ROWS = [
    {"instruction": "Say hi", "input": "", "output": "Hi there"},
    {"instruction": "Add", "input": "2+2", "output": ""},
    {"instruction": "Add", "input": "2+3", "output": "5"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("inspect") / "tiny-model")


def inspect(*args: str):
    return CliRunner().invoke(app, ["data", "inspect", *args], catch_exceptions=False)


def test_plain_output_marks_the_trained_part(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    result = inspect(str(data), "--set", f"model.name={model_dir}", "--set", "data.shuffle=false", "--samples", "1")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "template 'model' (end tokens: <|im_end|>)" in out
    assert "train: read 3, kept 2, dropped 1, truncated 0" in out
    assert f"dropped 1: empty assistant answer (e.g. {data}, line 2)" in out
    assert f"sources: {data} (alpaca, 3 records)" in out
    assert "of tokens carry loss" in out and "| prompt | answer | total |" in out
    assert f"--- {data}, line 1\n<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n[[Hi there<|im_end|>]]\n" in out


def test_json_output(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS * 4)
    result = inspect(str(data), "--json", "--set", f"model.name={model_dir}", "--set", "data.val_fraction=0.25")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    train, held = got["reports"]
    assert (train["records"], train["held_out"], train["read"]) == (12, 3, 9)
    assert train["kept"] == 9 - train["dropped"]["empty assistant answer"] and train["kept"] < 9
    assert held["from_train"] == 3 and held["split"] == "eval"
    assert {f["code"] for f in train["findings"]} >= {"duplicates", "pad_is_eos"}
    lengths = got["lengths"][0]
    assert sum(lengths["counts"]["total"]) == train["kept"] and 0 < lengths["loss_share"] < 1
    sample = got["samples"][0]
    trained = "".join(s["text"] for s in sample["segments"] if s["trained"])
    assert trained in ("Hi there<|im_end|>", "5<|im_end|>")


def test_config_file_and_doctor_errors_exit_1(tmp_path, model_dir):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "open.jinja").write_text(
        "{% for m in messages %}{{ m['role'] + ':\\n' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}", encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name: {model_dir}\ndata:\n  train: d.jsonl\n  template: open.jinja\n", encoding="utf-8")
    result = inspect(str(config))
    assert result.exit_code == 1
    assert "error: 2 answers carry no end-of-turn token in their labels (template 'open')" in result.output


def test_bad_data_stops_with_the_line(tmp_path, model_dir):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n', encoding="utf-8")
    result = inspect(str(data), "--set", f"model.name={model_dir}")
    assert result.exit_code == 2 and "bad.jsonl, line 2: not valid JSON" in result.output
    skipped = inspect(str(data), "--set", f"model.name={model_dir}", "--set", "data.skip_bad_records=true")
    assert skipped.exit_code == 0 and "skipped 1 bad records (data.skip_bad_records), first: " in skipped.output


DEEP = "[" * 100_000


@pytest.mark.parametrize("name,content,where,method", [
    ("d.json", '[{"instruction": "Say hi", "output": "Hi"},\n ' + DEEP, "d.json, line 2", "sft"),
    ("d.jsonl", '{"instruction": "Say hi", "output": "Hi"}\n' + DEEP + "\n", "d.jsonl, line 2", "sft"),
    ("p.jsonl", '{"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}\n{"prompt": "Hi", "chosen": ' + DEEP,
     "p.jsonl, line 2", "dpo"),
])
def test_json_nested_too_deeply_is_one_error_line_naming_the_place(tmp_path, model_dir, name, content, where, method):
    data = tmp_path / name
    data.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "inspect", str(data), "--set", f"model.name={model_dir}",
                                      "--set", f"method={method}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / where}: JSON nested too deeply to read (")


def test_pairs_say_each_side_trains_its_final_answer_not_the_sft_mode(tmp_path, model_dir):
    pairs = [{"prompt": "Say hi", "chosen": "Hi there", "rejected": "Go away"},
             {"prompt": "Add 2+3", "chosen": "5", "rejected": "6"}]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    result = inspect(str(data), "--set", f"model.name={model_dir}", "--set", "data.cache_dir=null")
    assert result.exit_code == 0, result.output
    assert "loss on each side's final answer, chosen and rejected (last_assistant)" in result.output
    assert "all_assistant" not in result.output  # data.train_on's default: not what pairs are masked with
    found = json.loads(inspect(str(data), "--json", "--set", f"model.name={model_dir}",
                               "--set", "data.cache_dir=null").output)
    assert found["train_on"] == "last_assistant" and found["pairs"] is True


def test_an_added_special_token_shows_as_training_encodes_it(tmp_path, model_dir):
    from lorakit.config_file import load_config
    from lorakit.train import recipe

    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Look it up", "output": "<tool>lisbon</tool>"}] * 2)
    common = [f"model.name={model_dir}", f"data.train={data}", "data.cache_dir=null", "data.shuffle=false"]
    added = [*common, "model.special_tokens=[<tool>, </tool>]"]

    def shown(settings: list[str]) -> dict:
        result = inspect(str(data), "--json", *(w for s in settings for w in ("--set", s)))
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)  # the log (a new token's note) is on stderr

    inspected, without = shown(added), shown(common)
    summary = recipe.run(load_config(None, [*added, f"output_dir={tmp_path / 'run'}", "train.max_steps=1",
                                            "train.progress_bar=false"]))
    trained = summary["data"][0]
    assert (inspected["reports"][0]["tokens"], inspected["reports"][0]["loss_tokens"]) == (
        trained["tokens"], trained["loss_tokens"])
    # Each added token is one token, so the answer is shorter than the same text in pieces.
    assert inspected["reports"][0]["loss_tokens"] < without["reports"][0]["loss_tokens"]
    answer = "".join(s["text"] for s in inspected["samples"][0]["segments"] if s["trained"])
    assert answer == "<tool>lisbon</tool><|im_end|>"
