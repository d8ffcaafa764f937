"""The new-run form: its fields are the schema's, and the file it writes is the config ``lorakit train`` loads."""

from __future__ import annotations

import pytest
import yaml

from lorakit.config import RunConfig
from lorakit.config_file import load_config
from lorakit.ui import form
from lorakit.ui.guard import UIError
from tests.conftest import write_jsonl

ROWS = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]


def test_every_knob_is_a_schema_key_with_its_own_description_and_default():
    for knob in form.knobs():
        section, _, leaf = knob.key.rpartition(".")
        model = RunConfig.model_fields[section].annotation if section else RunConfig
        field = model.model_fields[leaf]
        assert knob.description == field.description
        if field.default is not None and not callable(field.default_factory):
            assert knob.default == str(field.default)
    method = next(k for k in form.knobs() if k.key == "method")
    assert method.choices == ["sft", "dpo", "orpo", "simpo", "kto", "grpo"]


def test_the_written_file_loads_as_lorakit_train_loads_it(access, folders, monkeypatch):
    runs, data = folders
    write_jsonl(data / "train.jsonl", ROWS)
    monkeypatch.chdir(data)  # a relative data path, as typed in the form, is the dashboard's folder's
    values = {"data.train": "train.jsonl", "method": "sft", "train.max_steps": "3", "train.learning_rate": "1e-3",
              "lora.rank": "4", "data.max_length": "", "model.name": ""}
    raw = form.build("r1", values, "# a comment\ntrain.batch_size=2\nlora.dropout=0.1", access)
    written = form.write_config(runs / "r1.yaml", raw)
    monkeypatch.chdir(runs.parent)  # lorakit train runs elsewhere: the file says everything itself
    loaded = load_config(written.path)
    assert loaded == written.config
    assert loaded.data.train[0].path == str(data / "train.jsonl")
    assert (loaded.train.max_steps, loaded.train.learning_rate, loaded.lora.rank) == (3, 1e-3, 4)
    assert (loaded.train.batch_size, loaded.lora.dropout, loaded.data.max_length) == (2, 0.1, 1024)
    assert loaded.output_dir == runs / "r1" and loaded.name == "r1"
    assert yaml.safe_load(written.text) == raw  # what the page shows is the file


def test_bad_values_are_refused_as_lorakit_train_refuses_them(access, folders):
    runs, data = folders
    write_jsonl(data / "train.jsonl", ROWS)
    with pytest.raises(UIError, match="not a field of the form"):
        form.build("r", {"lora.rnak": "4"}, "", access)
    with pytest.raises(UIError, match="run name"):
        form.build("../x", {}, "", access)
    raw = form.build("r", {"data.train": str(data / "train.jsonl")}, "lora.rnak=4", access)
    with pytest.raises(Exception, match="did you mean lora.rank"):
        form.write_config(runs / "r.yaml", raw)


def test_a_hub_dataset_name_is_left_to_the_loader(access):
    raw = form.build("r", {"data.train": "tatsu-lab/alpaca"}, "", access)
    assert raw["data"]["train"] == ["tatsu-lab/alpaca"]


@pytest.mark.parametrize("line", [
    "data.train=[{path: /etc/passwd, weight: 2}]", "data.eval=/etc/passwd", "data.eval=[../../secret.jsonl]",
    "data.template=/etc/chat.jinja", "model.adapter=/etc", "eval.scorer=/tmp/../etc/score.py:score",
    "grpo.rewards=[/etc/reward.py:reward]",
])
def test_every_local_path_a_key_value_line_names_is_guarded_too(access, folders, line):
    _, data = folders
    write_jsonl(data / "train.jsonl", ROWS)
    with pytest.raises(UIError, match="outside the folders"):
        form.build("r", {"data.train": str(data / "train.jsonl")}, line, access)


def test_local_paths_inside_are_made_absolute_and_module_specs_left_alone(access, folders, monkeypatch):
    _, data = folders
    monkeypatch.chdir(data)
    raw = form.build("r", {}, "data.train=[{path: train.jsonl, weight: 2}]\ndata.eval=held.jsonl\n"
                     "eval.scorer=score.py:fn\ngrpo.rewards=[rewards.py:a, mypkg.rewards:b]", access)
    assert raw["data"]["train"] == [{"path": str(data / "train.jsonl"), "weight": 2}]
    assert raw["data"]["eval"] == str(data / "held.jsonl")
    assert raw["eval"]["scorer"] == f"{data / 'score.py'}:fn"
    assert raw["grpo"]["rewards"] == [f"{data / 'rewards.py'}:a", "mypkg.rewards:b"]
