"""Splitting a batch into padding-free passes changes the compute, never the update."""

from __future__ import annotations

import pytest
import torch

from lorakit.data.collate import PadCollator
from lorakit.data.encode import Encoded
from lorakit.train import recipe
from lorakit.train.microbatch import plan, split_batch
from tests.train.helpers import LOSS_RTOL, ROWS, adapter, assert_same_update, metrics, tiny_config


def test_plan_respects_the_budget_and_keeps_padding_low():
    lengths = [500, 120, 100, 90, 118, 600]
    passes = plan(lengths, budget=512)
    assert sorted(r for p in passes for r in p) == list(range(6))
    assert passes[0] == [5] and passes[1] == [0]  # longer than the budget, or too long to share: alone
    for rows in passes:
        width = max(lengths[r] for r in rows)
        assert len(rows) == 1 or len(rows) * width <= 512
        assert sum(width - lengths[r] for r in rows) <= 0.1 * len(rows) * width
    assert [1, 4, 2] in passes  # 120, 118 and 100 share a pass: 22 of 360 positions padded


def test_split_batch_trims_each_pass_to_its_own_longest():
    items = [Encoded([1] * n, [-100] * (n // 2) + [2] * (n - n // 2)) for n in (7, 30, 29, 3)]
    batch = PadCollator(0)(items)
    passes = split_batch(batch, budget=64)
    assert [p["input_ids"].shape for p in passes] == [torch.Size([2, 30]), torch.Size([1, 7]), torch.Size([1, 3])]
    for p in passes:
        assert set(p) == {"input_ids", "labels", "attention_mask"}
    assert sum(int(p["attention_mask"].sum()) for p in passes) == int(batch["attention_mask"].sum())
    assert sum(int((p["labels"] != -100).sum()) for p in passes) == int((batch["labels"] != -100).sum())
    # Packed rows carry position ids: they are not split.
    packed = {"input_ids": torch.ones(1, 9, dtype=torch.long), "labels": torch.ones(1, 9, dtype=torch.long),
              "position_ids": torch.arange(9)[None]}
    assert split_batch(packed, budget=4) == [packed]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_split_step_equals_the_whole_batch(tiny_model_dir, tmp_path, precision):
    common = ("train.max_steps=2", "train.logging_steps=1", "train.learning_rate=0.01", "train.warmup=0",
              "train.scheduler=constant", "train.save_steps=null", "train.batch_size=4", "data.shuffle=false",
              f"train.precision={precision}")
    whole = tiny_config(tiny_model_dir, tmp_path / "whole", "train.micro_batch_tokens=0", *common, rows=ROWS * 2)
    split = tiny_config(tiny_model_dir, tmp_path / "split", "train.micro_batch_tokens=16", *common, rows=ROWS * 2)
    seen: list[int] = []
    original = split_batch

    def spy(inputs, budget):
        passes = original(inputs, budget)
        seen.append(len(passes))
        return passes

    import lorakit.train.trainer as trainer_module

    trainer_module.split_batch = spy
    try:
        a, b = recipe.run(whole), recipe.run(split)
    finally:
        trainer_module.split_batch = original
    assert seen == [4, 4]  # four samples of different lengths over a 16-token budget: one pass each
    assert a["tokens_seen"] == b["tokens_seen"] and a["loss_tokens_seen"] == b["loss_tokens_seen"]
    for x, y in zip(metrics(whole.output_dir), metrics(split.output_dir)):
        if "loss" in x:
            assert x["loss"] == pytest.approx(y["loss"], rel=LOSS_RTOL[precision])
    wa, wb = adapter(whole.output_dir), adapter(split.output_dir)
    # fp32: summation order only; Adam's g/|g| magnifies it where a gradient is near zero,
    # hence an absolute tolerance of 1% of the learning rate. bf16: see helpers.py.
    assert_same_update(wa, wb, precision, atol=1e-4)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in wb.items() if "lora_B" in k)
