"""The config reference comes from the schema: every key, its default and its description, once."""

from __future__ import annotations

from pydantic import BaseModel
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.config import RunConfig
from lorakit.config_file import reference


def _leaves(model: type[BaseModel], prefix: str = "") -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        inner = [a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                 if isinstance(a, type) and issubclass(a, BaseModel) and a.__name__ != "DataSource"]
        names |= _leaves(inner[0], f"{prefix}{name}.") if inner else {prefix + name}
    return names


def test_the_reference_holds_every_key_with_its_default_and_a_description():
    keys = {k.name: k for k in reference()}
    assert _leaves(RunConfig) <= set(keys)
    assert all(k.description for k in keys.values()), [k.name for k in keys.values() if not k.description]
    defaults = RunConfig()
    assert keys["lora.rank"].default == str(defaults.lora.rank) == "16"
    assert keys["train.distributed.timeout_s"].default == "600"
    assert keys["model.quantization.bits"].default == "4" and keys["model.quantization"].default == "null"
    assert keys["data.max_length"].description == RunConfig.model_fields["data"].annotation.model_fields[
        "max_length"].description


def test_config_show_prints_it_as_markdown():
    result = CliRunner().invoke(app, ["config", "show", "--markdown"])
    assert result.exit_code == 0
    rows = [line for line in result.stdout.splitlines() if line.startswith("| `")]
    assert len(rows) == len(reference())
    assert any(row.startswith("| `lora.rank` | int | `16` | Higher: more capacity") for row in rows)
