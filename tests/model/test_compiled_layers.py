"""Compiled decoder layers (train.compile) compute what the eager layers compute.

float32: the loss and every LoRA gradient agree to float32 rounding (inductor fuses and reorders
sums; 1e-5 relative on the loss, 1e-4 on gradients, as the other pass-level switches). A new
pattern of sample lengths in a packed row reuses the compiled graphs (shapes are dynamic and the
per-sample attention is outside them), and a paused or removed compile is the eager model again.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from lorakit.model.compiled_layers import CompiledLayers, CompileError, compiler_missing, decoder_layers
from lorakit.model.loss import answer_only_loss, output_head
from lorakit.train.passes import PassRunner

from tests.conftest import make_tiny_model_dir, tiny_lora_model
from tests.tolerance import assert_close_at_scale

pytestmark = pytest.mark.skipif(compiler_missing("cpu") is not None, reason="torch.compile needs a C++ compiler")

# bf16 autocast: compiled kernels keep float32 between fused ops where eager rounds each op's output
# to bf16, so the two differ by bf16 rounding (0.4% a value), not by an error.
BF16_LOSS_RTOL, BF16_GRAD_COSINE = 1e-2, 0.99


def _row(lengths, seed=0):
    torch.manual_seed(seed)
    ids = torch.randint(5, 90, (1, sum(lengths)))
    labels = ids.clone()
    start = 0
    for n in lengths:
        labels[0, start:start + n // 2] = -100
        start += n
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def _loss_and_grads(model, runner, inputs, bf16=False):
    head = output_head(model)
    # A fresh context each time, as the Trainer gives: one torch.autocast entered twice (nested)
    # restores the wrong state on exit and leaves autocast on for the rest of the process.
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    with runner.run(inputs), autocast():
        loss = answer_only_loss(model, head, inputs, None, autocast=autocast())
    assert not torch.is_autocast_enabled("cpu")
    loss.backward()
    grads = {name: p.grad.float().clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.fixture
def model_and_runner(tiny_model_dir):
    model = tiny_lora_model(tiny_model_dir, attention="sdpa")
    # The CPU defaults a compiled run uses: per-sample attention (eager up to 16 positions) and fused LoRA.
    return model, PassRunner(model, True, eager_tokens=16, autocast=False, per_sample_attention=True, fuse_lora=True)


def test_decoder_layers_are_the_models_repeated_blocks(tiny_model_dir, tmp_path):
    model = tiny_lora_model(tiny_model_dir)
    assert [type(m).__name__ for m in decoder_layers(model)] == ["LlamaDecoderLayer"] * 2
    qwen = tiny_lora_model(make_tiny_model_dir(tmp_path / "qwen", arch="qwen2"))
    assert [type(m).__name__ for m in decoder_layers(qwen)] == ["Qwen2DecoderLayer"] * 2


@pytest.mark.slow  # inductor runs the C++ compiler in subprocesses
def test_compiled_layers_compute_what_eager_layers_do(model_and_runner):
    model, runner = model_and_runner
    first, second = _row([7, 30, 12]), _row([25, 3, 9, 14], seed=1)  # a short sample runs eager, a long one sdpa
    eager = [_loss_and_grads(model, runner, row) for row in (first, second)]
    layers = CompiledLayers(model)
    layers.compile("cpu")
    assert layers.active and all(layer._compiled_call_impl is not None for layer in layers.layers)
    compiled = [_loss_and_grads(model, runner, first)]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # A new pattern of lengths must not compile again: that would cost a compile per step.
    compiled.append(_loss_and_grads(model, runner, second))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    for (loss, grads), (want_loss, want_grads) in zip(compiled, eager):
        assert loss == pytest.approx(want_loss, rel=1e-5)
        for name in want_grads:
            assert_close_at_scale(grads[name], want_grads[name], rtol=1e-4, msg=name)
    with layers.paused():
        assert all(layer._compiled_call_impl is None for layer in layers.layers)
        paused = _loss_and_grads(model, runner, first)
    assert paused[0] == eager[0][0]  # the eager path again: bit for bit
    assert all(layer._compiled_call_impl is not None for layer in layers.layers)
    layers.remove()
    assert not layers.active and all(layer._compiled_call_impl is None for layer in layers.layers)


@pytest.mark.slow
def test_compiled_layers_under_bf16_autocast_match_eager_within_bf16_rounding(tiny_model_dir):
    model = tiny_lora_model(tiny_model_dir, torch.bfloat16, attention="sdpa")
    runner = PassRunner(model, True, eager_tokens=16, autocast=True, per_sample_attention=True, fuse_lora=True)
    row = _row([7, 30, 12])
    eager = _loss_and_grads(model, runner, row, bf16=True)
    layers = CompiledLayers(model)
    layers.compile("cpu")
    compiled = _loss_and_grads(model, runner, row, bf16=True)
    layers.remove()
    assert compiled[0] == pytest.approx(eager[0], rel=BF16_LOSS_RTOL)
    for name, want in eager[1].items():
        cosine = torch.nn.functional.cosine_similarity(compiled[1][name].flatten(), want.flatten(), dim=0)
        assert cosine > BF16_GRAD_COSINE, name


def test_a_model_without_known_layers_is_refused_by_name():
    layers = CompiledLayers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(CompileError, match="train.compile=false"):
        layers.compile("cpu")


def test_a_cpu_without_a_cpp_compiler_is_named(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert "C++ compiler" in compiler_missing("cpu")
    assert compiler_missing("cuda") is None
