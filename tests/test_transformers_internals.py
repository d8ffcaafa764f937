"""The contract with transformers' private names: checked against the installed release, loud
when one changes, and kept in transformers_internals.py alone."""

from __future__ import annotations

import ast
import time
from types import SimpleNamespace

import pytest
import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel, Trainer

from lorakit import transformers_internals as internals
from lorakit.train import recipe
from lorakit.train.trainer import LorakitTrainer
from lorakit.transformers_internals import NAMES, Private, TransformersChangedError, check_installed, check_loop_state
from tests.conftest import REPO
from tests.train.helpers import tiny_config


def test_the_installed_transformers_has_every_name_as_lorakit_uses_it():
    start = time.perf_counter()
    check_installed()
    assert time.perf_counter() - start < 0.05  # run at every trainer build: it must cost nothing to notice


def test_every_name_says_why_lorakit_needs_it():
    assert all(entry.why and entry.kind in internals._KINDS for entry in NAMES)
    assert len({(entry.owner, entry.name) for entry in NAMES}) == len(NAMES)


@pytest.mark.parametrize("owner, name, message", [
    (Trainer, "_get_output_dir", r"Trainer\._get_output_dir is gone; lorakit calls it to find the folder"),
    (Trainer, "_save", r"Trainer\._save is gone; lorakit overrides it to remove the frozen DPO reference"),
    (PreTrainedModel, "_supports_attention_backend", r"PreTrainedModel\._supports_attention_backend is gone"),
    (PretrainedConfig, "_attn_implementation", r"PretrainedConfig\._attn_implementation is gone"),
])
def test_a_name_gone_from_transformers_is_named_with_the_version(monkeypatch, owner, name, message):
    monkeypatch.delattr(owner, name)
    with pytest.raises(TransformersChangedError, match=message) as raised:
        check_installed()
    text = str(raised.value)
    assert text.startswith(f"transformers {transformers.__version__}: ") and "\n" not in text
    assert f"pip install 'transformers<{transformers.__version__}'" in text


def _save_with_a_path(self, path):
    pass


def _save_with_an_option(self, output_dir=None, state_dict=None, safe=True):
    pass


def _prepare_with_an_option(self, inputs, device=None):
    pass


def _prepare_with_a_required(self, inputs, device):
    pass


@pytest.mark.parametrize("name, replacement, message", [
    ("_save", _save_with_a_path, r"Trainer\._save now takes \(self, path\), not \(self, output_dir, state_dict\)"),
    # The Trainer could pass the new parameter to lorakit's override, which would not take it.
    ("_save", _save_with_an_option, r"Trainer\._save now takes \(self, output_dir, state_dict, safe\)"),
    ("_prepare_inputs", _prepare_with_a_required, r"Trainer\._prepare_inputs now takes \(self, inputs, device\)"),
    ("_prepare_inputs", property(lambda self: None), r"Trainer\._prepare_inputs is no longer a method"),
])
def test_a_changed_method_is_named(monkeypatch, name, replacement, message):
    monkeypatch.setattr(Trainer, name, replacement)
    with pytest.raises(TransformersChangedError, match=message):
        check_installed()


def test_a_method_lorakit_calls_may_gain_an_optional_parameter(monkeypatch):
    monkeypatch.setattr(Trainer, "_prepare_inputs", _prepare_with_an_option)
    check_installed()


def test_a_class_attribute_or_classmethod_that_changed_kind_is_named(monkeypatch):
    monkeypatch.setattr(PreTrainedModel, "_no_split_modules", _save_with_a_path)
    with pytest.raises(TransformersChangedError, match=r"PreTrainedModel\._no_split_modules is now a method"):
        check_installed()
    monkeypatch.undo()
    monkeypatch.setattr(PreTrainedModel, "_can_set_attn_implementation", lambda self: True)
    with pytest.raises(TransformersChangedError, match=r"_can_set_attn_implementation is no longer a classmethod"):
        check_installed()


def test_building_a_trainer_checks_the_names_first(monkeypatch):
    monkeypatch.delattr(Trainer, "_save_checkpoint")
    with pytest.raises(TransformersChangedError, match=r"Trainer\._save_checkpoint is gone"):
        LorakitTrainer(method=None)  # before the Trainer's own __init__ needs a model


def test_loop_state_missing_or_of_another_type_is_named():
    state = {"_tr_loss": torch.tensor(0.0), "_total_loss_scalar": 0.0, "_initial_global_step": 0}
    check_loop_state(SimpleNamespace(**state))
    gone = {k: v for k, v in state.items() if k != "_initial_global_step"}
    with pytest.raises(TransformersChangedError, match=r"Trainer\._initial_global_step is not set by Trainer\.train"):
        check_loop_state(SimpleNamespace(**gone))
    with pytest.raises(TransformersChangedError, match=r"_total_loss_scalar holds a Tensor, not a float"):
        check_loop_state(SimpleNamespace(**{**state, "_total_loss_scalar": torch.tensor(0.0)}))


def test_a_run_stops_before_its_first_step_when_the_loop_state_changed(tiny_model_dir, tmp_path, monkeypatch):
    # A name the installed Trainer.train does not set stands for one a new release renamed.
    renamed = Private("Trainer", "_renamed_loss_total", "loop state", "for a test", holds=float)
    monkeypatch.setattr(internals, "NAMES", (*NAMES, renamed))
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=2", "train.save_steps=1")
    with pytest.raises(TransformersChangedError, match=r"Trainer\._renamed_loss_total is not set by Trainer\.train"):
        recipe.run(cfg)
    assert not list((cfg.output_dir / "checkpoints").glob("checkpoint-*"))


def _private_names() -> set[str]:
    """Private names of transformers' Trainer, models and configs (torch's own nn.Module ones aside)."""
    found = {entry.name for entry in NAMES}
    for owner in (Trainer, PreTrainedModel, PretrainedConfig):
        found |= {n for n in dir(owner) if n.startswith("_") and not n.startswith("__")}
    return found - set(dir(torch.nn.Module))


def _uses(tree: ast.AST, private: set[str]) -> list[tuple[int, str]]:
    overrides = {entry.name for entry in NAMES if entry.kind == "override"}
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in private and node.name not in overrides:
            uses.append((node.lineno, node.name))
        elif isinstance(node, ast.Attribute) and node.attr in private:
            # An override calling the Trainer's own: super()._save(...)
            calls_super = (node.attr in overrides and isinstance(node.value, ast.Call)
                           and getattr(node.value.func, "id", None) == "super")
            if not calls_super:
                uses.append((node.lineno, node.attr))
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr", "setattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in private):
            uses.append((node.lineno, node.args[1].value))
    return uses


def test_no_other_module_in_src_names_a_private_name_of_transformers():
    private = _private_names()
    src = REPO / "src" / "lorakit"
    found = [f"{path.relative_to(src)}:{line}: {name}"
             for path in sorted(src.rglob("*.py")) if path.name != "transformers_internals.py"
             for line, name in _uses(ast.parse(path.read_text(encoding="utf-8")), private)]
    assert found == []
