"""A model.revision is honoured or refused: never quietly replaced by the embedded copy or a local model."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.config import ModelConfig
from lorakit.model.gguf_cache import ModelNotFoundError
from lorakit.model.loader import resolve_model_folder
from tests.conftest import make_tiny_model_dir, write_jsonl
from tests.train.helpers import ROWS

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded model's hub id, as a user writes it
MISSING = "no-such-branch-xyz"


def refusal(name: str, revision: str) -> str:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_folder(ModelConfig(name=name, revision=revision))
    return str(info.value)


def test_a_revision_of_the_embedded_model_with_no_cache_and_no_network_is_refused(hub):
    hub.stop()
    message = refusal(EMBEDDED_HUB_ID, MISSING)
    assert f"revision '{MISSING}'" in message and "could not be reached" in message
    assert "remove model.revision to train on it" in message and "\n" not in message


def test_a_revision_of_the_embedded_model_the_hub_lacks_is_refused(hub, tmp_path):
    hub.add_model(EMBEDDED_HUB_ID, make_tiny_model_dir(tmp_path / "main"))
    message = refusal(EMBEDDED_HUB_ID, MISSING)
    assert f"revision '{MISSING}' does not exist on the hub" in message
    assert "remove model.revision to train on it" in message


def test_a_revision_the_hub_has_is_fetched_not_the_embedded_copy(hub, tmp_path):
    commit = hub.add_model(EMBEDDED_HUB_ID, make_tiny_model_dir(tmp_path / "v2", seed=3), revision="v2")
    folder = Path(resolve_model_folder(ModelConfig(name=EMBEDDED_HUB_ID, revision="v2")))
    assert folder.name == commit and (folder / "model.safetensors").is_file()


def test_a_revision_on_an_embedded_alias_or_a_local_model_is_refused(tiny_model_dir, tmp_path):
    assert "has one revision, the hub's main" in refusal("smollm2", "v2")
    assert "is for hub models" in refusal(str(tiny_model_dir), "v2")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert "is for hub models" in refusal(str(gguf), "main")


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_train_and_data_inspect_refuse_a_revision_they_cannot_have(hub, tmp_path):
    hub.stop()
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    model = ["--set", f"model.name={EMBEDDED_HUB_ID}", "--set", f"model.revision={MISSING}"]
    trained = CliRunner().invoke(app, ["train", *model, "--set", f"data.train={data}",
                                       "--set", f"output_dir={tmp_path / 'run'}", "--set", "train.max_steps=1"])
    assert f"revision '{MISSING}'" in one_error_line(trained)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    inspected = CliRunner().invoke(app, ["data", "inspect", str(data), *model])
    assert f"revision '{MISSING}'" in one_error_line(inspected)
