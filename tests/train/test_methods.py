"""The method seam: the registry is what the config offers, and only a method module knows its name."""

from __future__ import annotations

import re
from typing import get_args

from lorakit.config import RunConfig
from lorakit.data.answers import ANSWERS
from lorakit.data.pair_dataset import PAIRS
from lorakit.data.prompt_rows import PROMPTS
from lorakit.data.samples import SAMPLES
from lorakit.train.methods import METHODS, method_for
from tests.conftest import REPO


def test_the_config_offers_exactly_the_registered_methods():
    assert set(get_args(RunConfig.model_fields["method"].annotation)) == set(METHODS)
    for name, method in METHODS.items():
        settings = {"grpo": {"rewards": ["builtin:valid_json"]}} if name == "grpo" else {}  # it needs a reward
        assert method.name == name and method_for(RunConfig(method=name, **settings)).name == name


def test_what_each_method_reads_and_reports():
    assert {n: m.rows for n, m in METHODS.items()} == {
        "sft": SAMPLES, "dpo": PAIRS, "orpo": PAIRS, "simpo": PAIRS, "kto": ANSWERS, "grpo": PROMPTS}
    assert [n for n, m in METHODS.items() if m.reference] == ["dpo", "kto", "grpo"]  # the reference pass: adapter off
    assert [n for n, m in METHODS.items() if m.perplexity] == ["sft"]
    assert [n for n, m in METHODS.items() if m.item is None] == ["sft"]  # a mean over answer tokens


def test_no_stage_outside_the_methods_branches_on_a_method_name():
    # config/ is the schema: it lists the names (the methods themselves refuse, when a config loads,
    # data they cannot read), and none of its code compares a method's name.
    src = REPO / "src" / "lorakit"
    hits = [f"{path.relative_to(src)}:{number}: {line.strip()}"
            for path in sorted(src.rglob("*.py")) if "methods" not in path.parts
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if re.search(r"\.method\s*[!=]=|[\"'](dpo|orpo|simpo|kto)[\"']", line)
            and not (path.parent.name == "config" and line.lstrip().startswith("method:"))]
    assert hits == []
