"""What one optimizer step computes: accumulation, non-finite guards, mixed precision."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from lorakit.data.collate import PadCollator
from lorakit.data.pipeline import build_splits
from lorakit.model.loader import load_tokenizer
from lorakit.templates import resolve_template
from lorakit.train import recipe
from lorakit.train.trainer import NonFiniteError
from tests.train.helpers import LOSS_RTOL, ROWS, adapter, assert_same_update, metrics, tiny_config


def token_weighted_loss(model_dir, cfg) -> float:
    """The loss of all samples as one batch, every answer token weighted equally."""
    tokenizer = load_tokenizer(str(model_dir))
    splits = build_splits(cfg.data, tokenizer, resolve_template(tokenizer, "auto"))
    batch = PadCollator(tokenizer.pad_token_id)(splits.train)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_accumulated_step_equals_one_large_batch(tiny_model_dir, tmp_path, precision):
    # Four samples of very different lengths: a mean of per-micro-batch means would differ.
    common = ("train.max_steps=1", "train.logging_steps=1", "train.learning_rate=0.01", "train.warmup=0",
              "train.scheduler=constant", "train.save_steps=null", f"train.precision={precision}")
    one = tiny_config(tiny_model_dir, tmp_path / "one", "train.batch_size=4", "train.grad_accum=1", *common, rows=ROWS)
    acc = tiny_config(tiny_model_dir, tmp_path / "acc", "train.batch_size=1", "train.grad_accum=4", *common, rows=ROWS)
    recipe.run(one)
    recipe.run(acc)
    loss_one = metrics(one.output_dir)[0]["loss"]
    loss_acc = metrics(acc.output_dir)[0]["loss"]
    # LoRA's B starts at zero, so the first step's loss is the base model's loss.
    expected = token_weighted_loss(tiny_model_dir, one)
    # The reference is float32: under bf16 it is also the check that bf16 computes the right loss.
    assert loss_one == pytest.approx(expected, rel=LOSS_RTOL[precision])
    assert loss_acc == pytest.approx(expected, rel=LOSS_RTOL[precision])
    assert_same_update(adapter(one.output_dir), adapter(acc.output_dir), precision)  # tolerances: helpers.py


class PoisonLogits(TrainerCallback):
    """Make the forward pass of one optimizer step produce NaN logits."""

    def __init__(self, step: int):
        self.step = step
        self.handle = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            head = model.get_output_embeddings()
            self.handle = head.register_forward_hook(lambda mod, inp, out: out * float("nan"))

    def on_step_end(self, args, state, control, **kwargs):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def test_nan_loss_stops_and_names_the_step(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=6", "train.batch_size=2", "train.save_steps=null")
    with pytest.raises(NonFiniteError, match="step 3: the loss is nan"):
        recipe.run(cfg, hooks=[PoisonLogits(3)])
    assert not (cfg.output_dir / "adapter_model.safetensors").exists()


def test_nan_loss_can_be_skipped(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=6", "train.batch_size=2", "train.save_steps=null",
                      "train.on_nonfinite=skip", "train.logging_steps=1")
    summary = recipe.run(cfg, hooks=[PoisonLogits(3)])
    assert summary["skipped_steps"] == [3] and summary["steps"] == 6
    assert all(torch.isfinite(t).all() for t in adapter(cfg.output_dir).values())


def test_bf16_autocast_matches_fp32(tiny_model_dir):
    from lorakit.hardware.cpu import cpu_has_bf16

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        full = model(input_ids=ids, labels=ids).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(input_ids=ids, labels=ids).loss
    # bf16 keeps 8 bits of mantissa: a loss near 6 agrees to about 1%.
    assert float(half) == pytest.approx(float(full), rel=1e-2)
    assert isinstance(cpu_has_bf16(), bool)


def test_short_bf16_run_learns_like_fp32(tiny_model_dir, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config(tiny_model_dir, tmp_path / precision, f"train.precision={precision}", "train.max_steps=20",
                          "train.batch_size=4", "train.learning_rate=0.02", "train.logging_steps=1",
                          "train.warmup=0", "train.scheduler=constant", "train.save_steps=null", "lora.rank=8")
        summary = recipe.run(cfg)
        assert summary["precision"] == precision
        losses[precision] = [r["loss"] for r in metrics(cfg.output_dir) if "loss" in r]
    for seen in losses.values():
        assert sum(seen[-5:]) / 5 < 0.7 * sum(seen[:5]) / 5
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=2e-2)
