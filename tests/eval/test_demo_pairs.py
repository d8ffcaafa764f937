"""The demo's pairs: shipped as the generator writes them, and DPO on them through the CLI makes the
embedded SmolLM2 prefer the exact JSON on held-out prompts without losing greedy exact match."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest

from tests.conftest import REPO, needs_embedded
from tests.test_cli import lorakit

DEMO = REPO / "examples" / "demo"


def test_the_shipped_pairs_are_what_the_seeded_generator_writes():
    spec = importlib.util.spec_from_file_location("make_pairs", DEMO / "make_pairs.py")
    make_pairs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_pairs)
    rng = random.Random(make_pairs.SEED)
    for source, target in (("train.jsonl", "pairs_train.jsonl"), ("eval.jsonl", "pairs_eval.jsonl")):
        rows = [json.loads(line) for line in (DEMO / source).read_text(encoding="utf-8").splitlines()]
        shipped = [json.loads(line) for line in (DEMO / target).read_text(encoding="utf-8").splitlines()]
        assert [make_pairs.pair(row, rng) for row in rows] == shipped
        assert all(p["chosen"] == r["output"] and p["rejected"] != p["chosen"] for p, r in zip(shipped, rows))
    assert {p["mistake"] for p in shipped} == set(make_pairs.MISTAKES)


@pytest.mark.slow
@needs_embedded
def test_dpo_on_the_demo_pairs_raises_preference_accuracy(tmp_path, embedded_cache):
    out = tmp_path / "demo-dpo"
    result = lorakit(
        "train", str(DEMO / "dpo.yaml"),
        "--set", f"output_dir={out}", "--set", f"model.cache_dir={embedded_cache}",
        "--set", "train.max_steps=6", "--set", "train.warmup=1", "--set", "train.progress_bar=false",
        "--set", "eval.at_end=true", "--set", "eval.limit=10", "--set", "generation.max_new_tokens=32",
        timeout=3600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "preference accuracy" in result.stdout
    report = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    rows = {m["key"]: m for m in report["metrics"]}
    assert rows["preference_accuracy"]["tuned"] > rows["preference_accuracy"]["base"], rows["preference_accuracy"]
    assert rows["exact_match"]["tuned"] >= rows["exact_match"]["base"], rows["exact_match"]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any("rewards/margins" in s for s in steps)
