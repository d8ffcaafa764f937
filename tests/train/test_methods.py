"""The method seam: the registry is what the config offers, and only a method module knows its name."""

from __future__ import annotations

import re
from typing import get_args

from lorakit.config import RunConfig
from lorakit.data.pair_dataset import PAIRS
from lorakit.data.samples import SAMPLES
from lorakit.train.methods import METHODS, method_for
from tests.conftest import REPO


def test_the_config_offers_exactly_the_registered_methods():
    assert set(get_args(RunConfig.model_fields["method"].annotation)) == set(METHODS)
    for name, method in METHODS.items():
        settings = {"grpo": {"rewards": ["builtin:valid_json"]}} if name == "grpo" else {}  # it needs a reward
        assert method.name == name and method_for(RunConfig(method=name, **settings)).name == name


def test_what_each_method_reads_and_reports():
    assert (METHODS["sft"].rows, METHODS["dpo"].rows, METHODS["orpo"].rows) == (SAMPLES, PAIRS, PAIRS)
    assert [n for n, m in METHODS.items() if m.reference] == ["dpo", "grpo"]  # the reference pass: adapter off
    assert [n for n, m in METHODS.items() if m.perplexity] == ["sft"]
    assert [n for n, m in METHODS.items() if m.item is None] == ["sft"]  # a mean over answer tokens


def test_no_stage_outside_the_methods_branches_on_a_method_name():
    # config/ is the schema: it lists the names and refuses, when a config loads, data a method cannot read.
    src = REPO / "src" / "lorakit"
    hits = [f"{path.relative_to(src)}:{number}: {line.strip()}"
            for path in sorted(src.rglob("*.py")) if "methods" not in path.parts and "config" not in path.parts
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if re.search(r"\.method\s*[!=]=|[\"'](dpo|orpo)[\"']", line)]
    assert hits == []
