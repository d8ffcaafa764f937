"""Two adapters on one base: switch in generate and chat without reloading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorakit.infer.catalog import parse_adapter_specs
from lorakit.infer.session import open_session
from tests.conftest import make_tiny_model_dir
from tests.export.conftest import make_run_dir

IDS = torch.tensor([[3, 17, 250, 42, 99, 7, 311, 5]])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("two")
    base = make_tiny_model_dir(root / "base", seed=5)
    first = make_run_dir(root / "extract", str(base), "lora.rank=4", seed=1)
    second = make_run_dir(root / "style", str(base), "lora.rank=8", "lora.target_modules=[q_proj,v_proj]", seed=2)
    return base, first, second


def logits(session) -> torch.Tensor:
    with torch.no_grad():
        return session.model(input_ids=IDS).logits


def test_switching_gives_each_adapters_own_model(two_runs, tmp_path):
    _, first, second = two_runs
    both = open_session(str(first), tmp_path, adapters=parse_adapter_specs([str(second)]))
    assert both.adapters == ("extract", "style")
    only_first, only_second = open_session(str(first), tmp_path), open_session(str(second), tmp_path)
    assert torch.equal(logits(both), logits(only_first))
    both.use("style")
    assert torch.equal(logits(both), logits(only_second))
    assert not torch.equal(logits(only_first), logits(only_second))
    with pytest.raises(ValueError, match="no adapter 'nope'; loaded: extract, style"):
        both.use("nope")


def test_adapters_from_other_bases_are_refused(two_runs, tmp_path):
    _, first, _ = two_runs
    elsewhere = make_run_dir(tmp_path / "elsewhere", str(make_tiny_model_dir(tmp_path / "b2", seed=9)), "lora.rank=4")
    with pytest.raises(ValueError, match="same base model"):
        open_session(str(first), tmp_path, adapters=parse_adapter_specs([str(elsewhere)]))


def test_generate_command_uses_the_named_adapter(two_runs):
    from typer.testing import CliRunner

    from lorakit.cli import app

    _, first, second = two_runs
    runner = CliRunner()
    args = ["generate", "--prompt", "Say the city of Maria.", "--max-new-tokens", "6"]
    alone = runner.invoke(app, [*args[:1], str(second), *args[1:]])
    switched = runner.invoke(app, [*args[:1], str(first), *args[1:], "--adapter", str(second), "--use", "style"])
    first_only = runner.invoke(app, [*args[:1], str(first), *args[1:]])
    assert alone.exit_code == switched.exit_code == first_only.exit_code == 0, switched.output
    assert switched.stdout == alone.stdout
    assert switched.stdout != first_only.stdout
    wrong = runner.invoke(app, [*args[:1], str(first), *args[1:], "--adapter", str(second), "--use", "nope"])
    assert wrong.exit_code == 2 and "no adapter 'nope'" in wrong.output
