"""One catalog behind every command: an adapter trained on another base is refused, with the reason, by each."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.infer.catalog import open_catalog, parse_adapter_specs
from lorakit.infer.session import open_session
from lorakit.model.adapter import AdapterError
from tests.conftest import make_tiny_model_dir
from tests.export.conftest import make_run_dir
from tests.infer.runs import save_random_adapter


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("foreign")
    ours, theirs = make_tiny_model_dir(root / "ours", seed=5), make_tiny_model_dir(root / "theirs", seed=9)
    return {
        "run": make_run_dir(root / "run", str(ours), "lora.rank=4", seed=1),
        "sibling": make_run_dir(root / "sibling", str(ours), "lora.rank=4", seed=2),
        "foreign": make_run_dir(root / "foreign", str(theirs), "lora.rank=4", seed=3),
        "bare": save_random_adapter(theirs, root / "bare", seed=4),  # plain peft: names its base in adapter_config
        "bare_ours": save_random_adapter(ours, root / "bare_ours", seed=4),
    }


COMMANDS = {
    "generate": lambda run, spec, out: ["generate", run, "--adapter", spec, "--prompt", "Hi", "--max-new-tokens", "2"],
    "chat": lambda run, spec, out: ["chat", run, "--adapter", spec],
    "serve": lambda run, spec, out: ["serve", run, "--adapter", spec, "--port", "0"],
    "merge": lambda run, spec, out: ["merge", run, "--with", spec.split("=", 1)[-1], "--out", str(out)],
}


# merge --with takes run folders only, so a bare peft adapter goes to the other three.
CASES = [(command, "foreign") for command in COMMANDS] + [(command, "bare") for command in COMMANDS if command != "merge"]


@pytest.mark.parametrize(("command", "which"), CASES)
def test_every_command_refuses_an_adapter_from_another_base(runs, command, which, tmp_path):
    args = COMMANDS[command](str(runs["run"]), f"other={runs[which]}", tmp_path / "merged")
    result = CliRunner().invoke(app, args, input="/exit\n")
    assert result.exit_code == 2, result.output
    assert "must come from" in result.output and "same base model" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "merged").exists()


def test_adapters_on_the_same_base_are_taken(runs, tmp_path):
    catalog = open_catalog(str(runs["run"]), tmp_path, [("sibling", runs["sibling"]), ("bare", runs["bare_ours"])])
    assert catalog.names() == ["base", "run", "sibling", "bare"]


def test_the_python_api_refuses_them_too(runs, tmp_path):
    for other in ("foreign", "bare"):
        with pytest.raises(AdapterError, match="same base model"):
            open_catalog(str(runs["run"]), tmp_path, [("x", runs[other])])
        with pytest.raises(AdapterError, match="same base model"):
            open_session(str(runs["run"]), tmp_path, adapters=parse_adapter_specs([str(runs[other])]))
