"""A packed row's attention per sample computes what the model's own masked attention over the row does.

Per sample eager (below the length) and per sample sdpa (above it) against the model's eager and
sdpa attention over the whole row with its packed mask: the same loss and LoRA gradients to
float32 rounding, for each family it is used for; the families it is not for keep their own.
"""

from __future__ import annotations

import pytest
import torch

from lorakit.data.collate import PackCollator
from lorakit.data.encode import Encoded
from lorakit.model.loss import answer_only_loss, output_head
from lorakit.model.packed_attention import PACKED, PackedAttentionError, _Segments, packed_attention
from lorakit.model.packed_attention import supports_packed_attention
from lorakit.train.passes import PassRunner
from tests.conftest import make_tiny_model_dir, tiny_lora_model
from tests.tolerance import assert_close_at_scale

LENGTHS = (7, 30, 1, 29, 3)


def _model(model_dir, attention):
    return tiny_lora_model(model_dir, attention=attention)


def _row():
    torch.manual_seed(2)
    items = []
    for n in LENGTHS:
        ids = torch.randint(5, 90, (n,)).tolist()
        items.append(Encoded(ids, [-100] * (n // 3) + ids[n // 3:]))
    return PackCollator()(items)


def _loss_and_grads(model, runner):
    row = _row()
    count = int((row["labels"][:, 1:] != -100).sum())
    with runner.run(row):
        loss = answer_only_loss(model, output_head(model), row, count)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def test_sample_lengths_come_from_where_the_positions_restart():
    assert _Segments.of(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])) == [3, 2, 4]
    assert _Segments.of(torch.tensor([[0, 1, 2, 3]])) == [4]
    assert _Segments.of(torch.tensor([[0, 0, 0]])) == [1, 1, 1]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "phi3", "mistral", "mistral-window-4"])
@pytest.mark.parametrize("own", ["eager", "sdpa"])
@pytest.mark.parametrize("eager_tokens", [0, 16, 512], ids=["sdpa-per-sample", "mixed", "eager-per-sample"])
def test_per_sample_attention_computes_the_rows_masked_attention(tmp_path, arch, own, eager_tokens):
    # mistral-window-4: a sliding window shorter than three of the samples, so the banded mask counts.
    sizes = {"sliding_window": 4} if arch.endswith("window-4") else {}
    model_dir = make_tiny_model_dir(tmp_path / arch, arch=arch.removesuffix("-window-4"), **sizes)
    model = _model(model_dir, own)
    reference = _loss_and_grads(model, PassRunner(model, True, 0, autocast=False))
    model = _model(model_dir, "sdpa")
    runner = PassRunner(model, True, eager_tokens, autocast=False, per_sample_attention=True)
    assert runner.attention_for(_row()) == PACKED
    ours = _loss_and_grads(model, runner)
    assert ours[0] == pytest.approx(reference[0], rel=1e-5)
    for name, grad in reference[1].items():
        assert_close_at_scale(ours[1][name], grad, rtol=1e-4, msg=name)


def test_only_plain_causal_families_and_packed_rows_get_it(tmp_path):
    gemma = _model(make_tiny_model_dir(tmp_path / "gemma2", arch="gemma2"), "eager")
    assert not supports_packed_attention(gemma.get_base_model().config)  # soft-capping
    assert PassRunner(gemma, True, 0, False, per_sample_attention=True).per_sample is None
    llama = _model(make_tiny_model_dir(tmp_path / "llama"), "sdpa")
    runner = PassRunner(llama, True, 0, False, per_sample_attention=True)
    padded = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5)}
    assert runner.attention_for(padded) == "sdpa"  # rows with padding: the model's own, masked
    assert PassRunner(llama, True, 0, False).attention_for(_row()) == "sdpa"  # switched off


def test_it_refuses_what_it_cannot_compute():
    q = torch.zeros(2, 4, 5, 8)
    with pytest.raises(PackedAttentionError, match="one packed row"):
        packed_attention(None, q, q, q, None, 1.0, position_ids=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(PackedAttentionError, match="one packed row"):
        packed_attention(None, q[:1], q[:1], q[:1], torch.ones(1, 5), 1.0, position_ids=torch.zeros(1, 5))


def test_per_sample_attention_under_bf16_autocast_matches_the_rows(tmp_path):
    # What the CPU default runs: bf16 frozen weights under bf16 autocast. Against the model's own
    # sdpa over the row in the same dtype: within bf16's rounding of the attention's sums.
    model_dir = make_tiny_model_dir(tmp_path / "llama")
    model = tiny_lora_model(model_dir, torch.bfloat16, attention="sdpa")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = _loss_and_grads(model, PassRunner(model, True, 0, autocast=True))
        ours = _loss_and_grads(model, PassRunner(model, True, 16, autocast=True, per_sample_attention=True))
    assert ours[0] == pytest.approx(reference[0], rel=5e-3)
    for name, grad in reference[1].items():
        cosine = torch.nn.functional.cosine_similarity(ours[1][name].float().flatten(), grad.float().flatten(), dim=0)
        assert float((ours[1][name] - grad).float().norm() / grad.float().norm()) < 0.05 and float(cosine) > 0.998, name
