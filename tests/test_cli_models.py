"""`lorakit models`: the families and their defaults, as a table and as JSON."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lorakit.cli import app


def test_models_lists_every_family_with_its_targets_and_end_tokens():
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    families = {f["family"]: f for f in json.loads(result.output)}
    assert list(families) == ["llama", "qwen", "phi3", "falcon", "bloom", "mistral", "gemma"]
    assert families["bloom"]["targets"]["attention"] == ["query_key_value", "dense"]
    assert families["phi3"]["targets"]["attention+mlp"] == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert families["gemma"]["end_tokens"] == ["<end_of_turn>"]
    assert families["bloom"]["embeddings"] == ["word_embeddings", "lm_head"] and families["bloom"]["tied"] is True
    assert all(f["targets"]["all-linear"] == "all-linear" for f in families.values())


def test_models_table_names_the_fused_modules_and_quirks():
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    for text in ("query_key_value", "gate_up_proj", "<|eot_id|>", "<end_of_turn>", "data.think=strip_empty"):
        assert text in result.output
