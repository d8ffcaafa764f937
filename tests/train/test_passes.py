"""Each way of running a pass computes what the plain path computes; only the speed differs.

Eager attention against sdpa and peft's adapter-input cast turned off under autocast: the same
loss and LoRA gradients (float32: summation order only; the cast: bit for bit). bf16 frozen
weights under bf16 autocast against float32: within bf16's rounding.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from lorakit.data.collate import PadCollator
from lorakit.data.encode import Encoded
from lorakit.model.loss import answer_only_loss, output_head
from lorakit.train.microbatch import split_batch
from lorakit.train.passes import PassRunner, reads_packed_positions

from tests.conftest import tiny_lora_model
from tests.tolerance import assert_close_at_scale

LENGTHS = (7, 30, 29, 3)
# bf16 keeps 8 bits of mantissa (0.4%): the loss moves by the weights' rounding (0.05% measured
# here), and each LoRA gradient by the rounding of every activation it passes back through: 4-9% of
# its norm measured on this random 2-layer model, always pointing the same way (cosine > 0.996).
BF16_LOSS_RTOL, BF16_GRAD_RTOL, BF16_GRAD_COSINE = 5e-3, 0.12, 0.99


def _model(model_dir, dtype=torch.float32):
    return tiny_lora_model(model_dir, dtype, attention="sdpa")


def _batch():
    torch.manual_seed(2)
    items = []
    for n in LENGTHS:
        ids = torch.randint(5, 90, (n,)).tolist()
        items.append(Encoded(ids, [-100] * (n // 3) + ids[n // 3:]))
    return PadCollator(0)(items)


def _loss_and_grads(model, runner: PassRunner, budget: int, autocast: bool):
    batch, head = _batch(), output_head(model)
    count = int((batch["labels"][:, 1:] != -100).sum())
    context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else nullcontext
    total = 0.0
    for part in split_batch(batch, budget, runner.packed):
        with runner.run(part), context():
            loss = answer_only_loss(model, head, part, count, autocast=context())
        loss.backward()
        total += loss.item()
    grads = {name: p.grad.float().clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return total, grads


@pytest.mark.parametrize("budget", [16, 4096], ids=["a-pass-per-sample", "one-packed-row"])
def test_eager_attention_computes_what_sdpa_does(tiny_model_dir, budget):
    model = _model(tiny_model_dir)
    sdpa = _loss_and_grads(model, PassRunner(model, True, eager_tokens=0, autocast=False), budget, False)
    runner = PassRunner(model, True, eager_tokens=512, autocast=False)
    assert runner.attention_for({"input_ids": torch.ones(1, 100)}) == "eager"
    assert runner.attention_for({"input_ids": torch.ones(1, 600)}) == "sdpa"
    eager = _loss_and_grads(model, runner, budget, False)
    assert model.get_base_model().config._attn_implementation == "eager"
    runner.restore()
    assert model.get_base_model().config._attn_implementation == "sdpa"
    assert eager[0] == pytest.approx(sdpa[0], rel=1e-5)
    for name in sdpa[1]:
        assert_close_at_scale(eager[1][name], sdpa[1][name], rtol=1e-4, msg=name)


def test_adapter_input_cast_off_under_autocast_changes_nothing(tiny_model_dir):
    model = _model(tiny_model_dir, torch.bfloat16)
    casting = _loss_and_grads(model, PassRunner(model, True, 512, autocast=False), 64, True)
    runner = PassRunner(model, True, 512, autocast=True)
    assert runner.adapters
    direct = _loss_and_grads(model, runner, 64, True)
    assert all(m.cast_input_dtype_enabled for m in runner.adapters)  # back on after each pass
    assert direct[0] == casting[0]
    for name in casting[1]:
        assert torch.equal(direct[1][name], casting[1][name]), name


def test_bf16_frozen_weights_match_float32_within_bf16_rounding(tiny_model_dir):
    full = _model(tiny_model_dir)
    half = _model(tiny_model_dir, torch.bfloat16)
    assert {p.dtype for n, p in half.named_parameters() if p.requires_grad} == {torch.float32}  # LoRA stays fp32
    assert half.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    reference = _loss_and_grads(full, PassRunner(full, True, 512, autocast=False), 64, False)
    ours = _loss_and_grads(half, PassRunner(half, True, 512, autocast=True), 64, True)
    assert ours[0] == pytest.approx(reference[0], rel=BF16_LOSS_RTOL)
    for name, grad in reference[1].items():
        error = (ours[1][name] - grad).norm() / grad.norm()
        assert float(error) < BF16_GRAD_RTOL, f"{name}: {float(error):.1%} off"
        cosine = torch.nn.functional.cosine_similarity(ours[1][name].flatten(), grad.flatten(), dim=0)
        assert float(cosine) > BF16_GRAD_COSINE, name


def test_only_models_that_read_packed_positions_get_packed_passes(tiny_model_dir):
    model = _model(tiny_model_dir)
    assert reads_packed_positions(model)
    assert PassRunner(model, None, 0, False).packed
    assert not PassRunner(model, False, 0, False).packed  # train.pass_packing=false
    assert not reads_packed_positions(torch.nn.Linear(2, 2))  # no transformers attention to read them
