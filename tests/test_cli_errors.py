"""One error handler for every command: lorakit's own errors are one line, anything else keeps its traceback."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.errors import LorakitError


def test_a_lorakit_error_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["runs", "show", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a lorakit run folder" in lines[0]
    assert "Traceback" not in result.output


def test_debug_adds_the_traceback_of_a_lorakit_error(tmp_path):
    result = CliRunner().invoke(app, ["--debug", "runs", "show", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr and "describe_run" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_every_refusal_the_cli_catches_is_a_lorakit_error():
    from lorakit.config import ConfigError
    from lorakit.data.records import DataError
    from lorakit.infer.catalog import CatalogError
    from lorakit.model.gguf_cache import ModelNotFoundError
    from lorakit.train.run_folder import RunFolderError

    for error in (ConfigError, DataError, CatalogError, ModelNotFoundError, RunFolderError):
        assert issubclass(error, LorakitError), error


def test_an_unexpected_exception_is_not_turned_into_a_message(tmp_path, monkeypatch):
    import lorakit.train.run_status as run_status

    def broken(folder):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(run_status, "describe_run", broken)
    result = CliRunner().invoke(app, ["runs", "show", str(tmp_path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError) and "error:" not in result.output


@pytest.mark.slow
def test_an_unexpected_exception_prints_its_traceback(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import lorakit.train.run_status as run_status
        from lorakit.cli import main

        def broken(folder):
            raise RuntimeError("a bug, not bad input")

        run_status.describe_run = broken
        sys.argv = ["lorakit", "runs", "show", {str(tmp_path)!r}]
        main()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError" in result.stderr and "a bug, not bad input" in result.stderr


def test_a_symlink_loop_as_training_data_is_one_line_naming_it(tmp_path):
    (tmp_path / "a.jsonl").symlink_to("b")
    (tmp_path / "b").symlink_to("a.jsonl")
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  train: a.jsonl\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "inspect", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: data.train: {tmp_path / 'a.jsonl'} is a symlink loop")


def _one_error_line(args: list[str]) -> str:
    """Run a command that must be refused: exit 2, one ``error:`` line on stderr, no traceback; that line."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("command", [["train"], ["data", "inspect", "samples.jsonl"]])
@pytest.mark.parametrize("item", ["data.train=[unclosed", "x=!!python/object:os.system ['echo owned']"])
def test_set_with_bad_yaml_is_one_line_naming_the_item(command, item):
    # Both were yaml tracebacks (a ParserError; a ConstructorError, the safe loader refusing the tag).
    line = _one_error_line([*command, "--set", item])
    assert f"--set {item}: the value is not valid YAML" in line and "quote it" in line


@pytest.mark.parametrize("command", [["train"], ["data", "inspect", "samples.jsonl"]])
@pytest.mark.parametrize("key", ["seed", "data.seed"])
def test_a_seed_beyond_32_bits_is_refused_before_anything_loads(command, key):
    # numpy takes seeds up to 2**32 - 1; a larger one failed training after the data and the model loaded.
    result = CliRunner().invoke(app, [*command, "--set", f"{key}={2**32}"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.startswith("error: invalid configuration") and f"{key}: " in result.stderr
    assert "4294967295" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("command", [["generate", "nowhere", "--prompt", "hi"], ["chat", "nowhere"]])
def test_a_sampling_seed_beyond_32_bits_is_refused_as_an_option(command):
    line = _one_error_line([*command, "--seed", str(2**32)])
    assert "--seed: " in line and "4294967295" in line



@pytest.fixture(scope="module")
def not_runs(tmp_path_factory) -> dict[str, Path]:
    """A plain folder holding a file of the user's, a transformers model folder (neither is a run), and a run."""
    from tests.conftest import make_tiny_model_dir
    from tests.export.conftest import make_run_dir

    root = tmp_path_factory.mktemp("not-runs")
    plain = root / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a run", encoding="utf-8")
    model = make_tiny_model_dir(root / "model")
    pairs = root / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n', encoding="utf-8")
    return {"plain": plain, "model": model, "run": make_run_dir(root / "run", str(model), "lora.rank=4"),
            "pairs": pairs}


# Each command that takes a run, given FOLDER; and whether it takes a model folder as well.
TAKE_A_RUN = {
    "merge": ("merge FOLDER --out OUT", False),
    "merge --with": ("merge RUN --with FOLDER --out OUT", False),
    "export gguf": ("export gguf FOLDER --out OUT/m.gguf", True),
    "export gguf --adapter-only": ("export gguf FOLDER --adapter-only --out OUT/a.gguf", False),
    "chat": ("chat FOLDER", True),
    "generate": ("generate FOLDER --prompt hi", True),
    "eval": ("eval FOLDER --data PAIRS", True),
    "serve": ("serve FOLDER", True),
    "chat --adapter": ("chat smollm2 --adapter x=FOLDER", False),
    "runs show": ("runs show FOLDER", False),
    "model.adapter": ("train --no-verbose --set method=dpo --set model.adapter=FOLDER --set data.train=PAIRS "
                      "--set output_dir=OUT", False),
}


NOT_RUNS = [(command, which) for command, (_, takes_models) in TAKE_A_RUN.items()
            for which in ("plain", "model") if which == "plain" or not takes_models]


@pytest.mark.parametrize(("command", "which"), NOT_RUNS)
def test_a_folder_that_is_no_run_gets_the_same_one_line_error_from_every_command(not_runs, command, which, tmp_path):
    line = TAKE_A_RUN[command][0]
    folder, out = not_runs[which], tmp_path / "out"
    places = {"FOLDER": folder, "OUT": out, "RUN": not_runs["run"], "PAIRS": not_runs["pairs"]}
    args = [re.sub("|".join(places), lambda m: str(places[m.group(0)]), word) for word in line.split()]
    error = _one_error_line(args)
    assert error.startswith(f"error: {folder} is not a lorakit run folder (no "), error
    assert "; give " in error and "`lorakit train`" in error
    assert not out.exists()
