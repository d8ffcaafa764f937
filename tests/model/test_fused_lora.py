"""The fused LoRA linear computes what peft's LoRA linear does, and steps aside where it cannot.

float32: the same loss and gradients to float32 rounding (the sums run in another order). bf16
frozen weights under bf16 autocast: within bf16's rounding of peft's own bf16 path. Layers or
calls it does not cover (dropout in training, DoRA, a switched-off adapter) run peft's forward.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from lorakit.data.collate import PadCollator
from lorakit.data.encode import Encoded
from lorakit.model import fused_lora
from lorakit.model.loss import answer_only_loss, output_head
from tests.conftest import make_tiny_model_dir, tiny_lora_model
from tests.tolerance import assert_close_at_scale


def _model(model_dir, dtype=torch.float32, **lora):
    return tiny_lora_model(model_dir, dtype, **lora)


def _batch():
    torch.manual_seed(2)
    items = [Encoded(ids, [-100] * 3 + ids[3:]) for ids in (torch.randint(5, 90, (n,)).tolist() for n in (9, 20, 4))]
    return PadCollator(0)(items)


def _loss_and_grads(model, fuse: bool, autocast: bool = False):
    batch = _batch()
    count = int((batch["labels"][:, 1:] != -100).sum())
    layers = [m for m in model.modules() if fused_lora.fusable(m)] if fuse else []
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
    torch.manual_seed(3)  # the same dropout masks, where there is dropout
    with fused_lora.fused(layers), context:
        loss = answer_only_loss(model, output_head(model), batch, count)
    if loss.requires_grad:  # not with the adapter switched off
        loss.backward()
    grads = {name: p.grad.float().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.fixture
def count_fused(monkeypatch):
    calls = []
    apply = fused_lora._LoraLinear.apply
    monkeypatch.setattr(fused_lora._LoraLinear, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: q, k and v carry a bias
def test_fused_equals_peft_in_float32(tmp_path, arch, count_fused):
    model = _model(make_tiny_model_dir(tmp_path / arch, arch=arch))
    reference = _loss_and_grads(model, fuse=False)
    assert not count_fused
    ours = _loss_and_grads(model, fuse=True)
    assert len(count_fused) == 2 * 7  # every adapted linear of both layers went through the fused op
    assert ours[0] == pytest.approx(reference[0], rel=1e-6)
    for name, grad in reference[1].items():
        assert_close_at_scale(ours[1][name], grad, rtol=1e-4, msg=name)
    assert all("forward" not in vars(m) for m in model.modules())  # peft's forward back after the block


def test_fused_under_bf16_autocast_is_as_close_to_float32_as_peft(tmp_path):
    model_dir = make_tiny_model_dir(tmp_path / "llama")
    exact = _loss_and_grads(_model(model_dir), fuse=False)
    model = _model(model_dir, torch.bfloat16)
    peft_bf16 = _loss_and_grads(model, fuse=False, autocast=True)
    ours = _loss_and_grads(model, fuse=True, autocast=True)
    # Both compute every product in bf16 and round differently (peft rounds each LoRA product and sum
    # to bf16, the fused op adds the low-rank product inside one addmm): each is as far from float32.
    assert abs(ours[0] - exact[0]) <= 2 * abs(peft_bf16[0] - exact[0]) + 1e-3 * abs(exact[0])
    for name, grad in exact[1].items():
        assert ours[1][name].dtype == torch.float32  # LoRA's gradients in its own float32
        error = float((ours[1][name] - grad).norm() / grad.norm())
        peft_error = float((peft_bf16[1][name] - grad).norm() / grad.norm())
        assert error < max(1.5 * peft_error, 0.02), f"{name}: fused {error:.1%} off float32, peft {peft_error:.1%}"


@pytest.mark.parametrize("case", ["dropout", "dora", "adapter-off"])
def test_what_it_cannot_fuse_runs_peft_forward(tmp_path, case, count_fused):
    model_dir = make_tiny_model_dir(tmp_path / "llama")
    model = _model(model_dir, **({"dropout": 0.1} if case == "dropout" else {"use_dora": True} if case == "dora" else {}))
    off = model.disable_adapter() if case == "adapter-off" else nullcontext()
    with off:
        reference = _loss_and_grads(model, fuse=False)
        ours = _loss_and_grads(model, fuse=True)
    assert not count_fused
    assert ours[0] == reference[0]
    for name, grad in reference[1].items():
        assert torch.equal(ours[1][name], grad), name
    if case == "dropout":  # in evaluation dropout does nothing, so those calls fuse
        model.eval()
        with torch.no_grad(), fused_lora.fused([m for m in model.modules() if fused_lora.fusable(m)]):
            model(**{k: v for k, v in _batch().items() if k != "labels"})
        assert count_fused
