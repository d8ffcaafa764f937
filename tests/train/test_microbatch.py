"""Splitting a batch into padding-free passes changes the compute, never the update."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from lorakit.data.collate import PadCollator
from lorakit.data.encode import Encoded
from lorakit.train import recipe
from lorakit.train.microbatch import PassCost, plan, positions, split_batch, split_runs
from tests.train.helpers import LOSS_RTOL, ROWS, adapter, assert_same_update, metrics, tiny_config


def _cheapest_by_brute_force(lengths: list[int], budget: int, packed: bool, cost: PassCost) -> float:
    """Every way to cut the sorted lengths into contiguous passes (2^(n-1) of them)."""
    sizes = sorted(lengths, reverse=True)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(sizes) - 1):
        groups, start = [], 0
        for i, cut in enumerate(cuts, start=1):
            if cut:
                groups.append(sizes[start:i])
                start = i
        groups.append(sizes[start:])
        if all(len(g) == 1 or positions(g, packed) <= budget for g in groups):
            best = min(best, sum(cost.of(g, packed) for g in groups))
    return best


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_plan_is_the_cheapest_split_within_the_budget(packed):
    cost = PassCost()
    rng = random.Random(0)
    for _ in range(40):
        lengths = [rng.choice([rng.randint(5, 60), rng.randint(100, 700)]) for _ in range(rng.randint(1, 9))]
        budget = rng.choice([64, 256, 512, 1024])
        passes = plan(lengths, budget, packed, cost)
        assert sorted(r for p in passes for r in p) == list(range(len(lengths)))
        groups = [[lengths[r] for r in rows] for rows in passes]
        for group in groups:
            assert group == sorted(group, reverse=True)
            assert len(group) == 1 or positions(group, packed) <= budget  # a row over the budget goes alone
        total = sum(cost.of(g, packed) for g in groups)
        assert total == pytest.approx(_cheapest_by_brute_force(lengths, budget, packed, cost))


def test_plan_weighs_a_pass_against_padding_and_attention():
    # Four short samples: one pass is cheaper than four (the fixed cost of a pass is ~75 positions).
    assert plan([120, 100, 90, 118], budget=1024, packed=True) == [[0, 3, 1, 2]]
    # Long rows: attention's square makes two packed rows of ~600 cheaper than one of 1,200.
    assert len(plan([600, 600], budget=2048, packed=True)) == 2
    # Padded, a 500-token sample and three of ~100 do not share a pass: 1,200 padded positions.
    assert plan([500, 120, 100, 90], budget=2048, packed=False) == [[0], [1, 2, 3]]


def test_split_batch_trims_each_pass_to_its_own_longest():
    items = [Encoded([1] * n, [-100] * (n // 2) + [2] * (n - n // 2)) for n in (7, 30, 29, 3)]
    batch = PadCollator(0)(items)
    passes = split_batch(batch, budget=64)
    assert [p["input_ids"].shape for p in passes] == [torch.Size([2, 30]), torch.Size([2, 7])]
    for p in passes:
        assert set(p) == {"input_ids", "labels", "attention_mask"}
    assert sum(int(p["attention_mask"].sum()) for p in passes) == int(batch["attention_mask"].sum())
    assert sum(int((p["labels"] != -100).sum()) for p in passes) == int((batch["labels"] != -100).sum())
    # Packed rows carry position ids: they are not split.
    packed = {"input_ids": torch.ones(1, 9, dtype=torch.long), "labels": torch.ones(1, 9, dtype=torch.long),
              "position_ids": torch.arange(9)[None]}
    assert split_batch(packed, budget=4) == [packed]
    assert split_batch(packed, budget=4, packed=True) == [packed]


def test_split_runs_keeps_each_prompts_rows_together_in_order_within_the_budget():
    """Invariant over random batches: every row once, in order; each pass whole runs of ``run`` rows;
    a pass's runs x widest shared row within the budget unless it is one run; per-row values follow."""
    rng = random.Random(7)
    for _ in range(200):
        run, runs = rng.randint(2, 4), rng.randint(1, 6)
        items, widths = [], []
        for _ in range(runs):
            prompt = [rng.randint(5, 90) for _ in range(rng.randint(1, 30))]
            answers = [[rng.randint(5, 90) for _ in range(rng.randint(1, 20))] for _ in range(run)]
            items += [Encoded(prompt + a, [-100] * len(prompt) + a) for a in answers]
            widths.append(len(prompt) + sum(map(len, answers)))
        batch = PadCollator(0)(items)
        batch["advantages"] = torch.arange(len(items), dtype=torch.float32).reshape(-1, 1)
        budget = rng.choice([0, 40, 100, 400])
        passes = split_runs(batch, budget, run)
        order = [int(v) for part in passes for v in part["advantages"][:, 0]]
        assert order == list(range(len(items)))
        for part in passes:
            first, rows = int(part["advantages"][0, 0]), part["input_ids"].shape[0]
            assert first % run == 0 and rows % run == 0
            shared = [widths[(first + k) // run] for k in range(0, rows, run)]
            assert rows == run or budget == 0 or len(shared) * max(shared) <= budget
            lengths = part["attention_mask"].sum(dim=1)
            assert part["input_ids"].shape[1] == int(lengths.max())  # trimmed to its longest row
            for k in range(rows):
                n = int(lengths[k])
                assert part["input_ids"][k, :n].tolist() == items[first + k].input_ids
        if budget == 0:
            assert len(passes) == 1


def test_packed_passes_are_rows_whose_positions_restart_per_sample():
    items = [Encoded(list(range(10, 10 + n)), [-100] * (n // 2) + list(range(n - n // 2))) for n in (7, 30, 29, 3)]
    batch = PadCollator(0)(items)
    passes = split_batch(batch, budget=40, packed=True)
    assert [p["input_ids"].shape for p in passes] == [torch.Size([1, 30]), torch.Size([1, 39])]
    assert all(set(p) == {"input_ids", "labels", "position_ids"} for p in passes)
    second = passes[1]
    # Samples 29, 7 and 3 long, in that order: their own tokens, positions from 0 for each.
    assert second["input_ids"][0].tolist() == items[2].input_ids + items[0].input_ids + items[3].input_ids
    assert second["position_ids"][0].tolist() == [*range(29), *range(7), *range(3)]
    # A sample's first label is never a target (nothing precedes it), packed or not.
    assert second["labels"][0, [0, 29, 36]].tolist() == [-100, -100, -100]
    targets = sum(int((p["labels"][:, 1:] != -100).sum()) for p in passes)
    assert targets == int((batch["labels"][:, 1:] != -100).sum())


# (pass_packing, micro_batch_tokens, passes per step): a pass per sample, padded or packed; then
# all four samples packed into one row, where attention must stay within each sample.
SPLITS = [pytest.param("false", 16, 4, id="padded"), pytest.param("true", 16, 4, id="packed"),
          pytest.param("true", 4096, 1, id="one-packed-row")]


@pytest.mark.parametrize(("packing", "budget", "per_step"), SPLITS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_split_step_equals_the_whole_batch(tiny_model_dir, tmp_path, precision, packing, budget, per_step):
    common = ("train.max_steps=2", "train.logging_steps=1", "train.learning_rate=0.01", "train.warmup=0",
              "train.scheduler=constant", "train.save_steps=null", "train.batch_size=4", "data.shuffle=false",
              f"train.precision={precision}")
    whole = tiny_config(tiny_model_dir, tmp_path / "whole", "train.micro_batch_tokens=0", *common, rows=ROWS * 2)
    split = tiny_config(tiny_model_dir, tmp_path / "split", f"train.micro_batch_tokens={budget}", *common,
                        f"train.pass_packing={packing}", rows=ROWS * 2)
    seen: list[int] = []
    original = split_batch

    def spy(*args):
        passes = original(*args)
        seen.append(len(passes))
        return passes

    import lorakit.train.methods.sft as sft_module

    sft_module.split_batch = spy
    try:
        a, b = recipe.run(whole), recipe.run(split)
    finally:
        sft_module.split_batch = original
    assert seen == [per_step, per_step]  # 16 tokens: four samples of different lengths, one pass each
    assert a["tokens_seen"] == b["tokens_seen"] and a["loss_tokens_seen"] == b["loss_tokens_seen"]
    for x, y in zip(metrics(whole.output_dir), metrics(split.output_dir)):
        if "loss" in x:
            assert x["loss"] == pytest.approx(y["loss"], rel=LOSS_RTOL[precision])
    wa, wb = adapter(whole.output_dir), adapter(split.output_dir)
    # fp32: summation order only; Adam's g/|g| magnifies it where a gradient is near zero,
    # hence an absolute tolerance of 1% of the learning rate. bf16: see helpers.py.
    assert_same_update(wa, wb, precision, atol=1e-4)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in wb.items() if "lora_B" in k)
