"""Several adapters on one base: each name computes what that adapter alone computes, even under threads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lorakit.infer.catalog import BASE, UnknownModel, open_catalog, parse_adapter_specs
from tests.infer.runs import make_tiny_catalog

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    catalog, run, extra = make_tiny_catalog(root, "extra.v2")
    base_dir = root / "base"

    @torch.inference_mode()
    def reference(adapter: Path | None) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter)).eval()
        return model(IDS).logits

    expected = {BASE: reference(None), "run": reference(run), "extra.v2": reference(extra)}
    return catalog, expected, root


@torch.inference_mode()
def logits_of(catalog, name: str) -> torch.Tensor:
    with catalog.hold(name):
        return catalog.model(IDS).logits


def test_names_and_default(setup):
    catalog, _, _ = setup
    assert catalog.names() == [BASE, "run", "extra.v2"]
    assert catalog.default == "run"  # the run's own adapter, not the bare base
    with pytest.raises(UnknownModel):
        catalog.get("nope")


def test_each_name_computes_what_its_adapter_alone_computes(setup):
    catalog, expected, _ = setup
    for name in ["extra.v2", BASE, "run", BASE, "extra.v2"]:
        torch.testing.assert_close(logits_of(catalog, name), expected[name], rtol=1e-5, atol=1e-5)
    # The three really differ, so the equalities above say something.
    assert not torch.allclose(expected["run"], expected["extra.v2"], atol=1e-3)
    assert not torch.allclose(expected["run"], expected[BASE], atol=1e-3)


def test_threads_asking_for_different_adapters_never_mix(setup):
    catalog, expected, _ = setup
    names = [BASE, "run", "extra.v2"]
    mixed: list[str] = []

    def worker(offset: int) -> None:
        for step in range(12):
            name = names[(offset + step) % 3]
            if not torch.allclose(logits_of(catalog, name), expected[name], rtol=1e-5, atol=1e-5):
                mixed.append(name)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mixed == []


def test_adapter_specs_and_their_errors(setup, tmp_path):
    _, _, root = setup
    assert parse_adapter_specs(["a=runs/a", " b = x/y "]) == [("a", Path("runs/a")), ("b", Path("x/y"))]
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_adapter_specs(["just-a-path"])
    with pytest.raises(ValueError, match="'run' is taken"):
        open_catalog(str(root / "run"), tmp_path, [("run", root / "extra.v2")])
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        open_catalog(str(root / "run"), tmp_path, [("x", tmp_path)])
