"""Rows sharing a prompt, computed with the prompt once, give the log-probs and gradients of the rows apart.

float32, so the only difference is the order of sums inside attention and the matmuls: 1e-5 of the
largest value for log-probs, 1e-4 for the LoRA gradients (a gradient sums over many more terms);
both far below what a wrong mask or position changes (those move log-probs by whole units).
"""

from __future__ import annotations

import pytest
import torch

from lorakit.data.collate import PadCollator
from lorakit.data.encode import Encoded
from lorakit.model import shared_prompt
from lorakit.model.loss import causal_lm, selective_loss_supported, token_logps
from tests.conftest import ARCHITECTURES, make_tiny_model_dir, tiny_lora_model
from tests.tolerance import assert_close_at_scale

IGNORE = -100


def _rows():
    """Two prompts with three and two completions, a prompt with one, and a completion masked out whole
    (grpo.mask_truncated), in GRPO's order: a prompt's rows together."""
    torch.manual_seed(5)
    prompts = [torch.randint(5, 90, (n,)).tolist() for n in (7, 4, 9)]
    completions = [(0, 5), (0, 2), (0, 6), (1, 3), (1, 1), (2, 4), (1, 3)]
    items = []
    for k, (p, n) in enumerate(completions):
        answer = torch.randint(5, 90, (n,)).tolist()
        labels = [IGNORE] * len(prompts[p]) + ([IGNORE] * n if k == 6 else answer)
        items.append(Encoded(prompts[p] + answer, labels))
    return PadCollator(0)(items)


def _logps_and_grads(model, batch, shared: bool, temperature=1.0):
    selective = selective_loss_supported(model)
    if shared:
        found, keep = shared_prompt.prompt_shared_logps(model, batch, 2048, selective, None, temperature)
    else:
        found, keep = token_logps(model, batch, 2048, selective, None, temperature)
    (found * torch.linspace(0.5, 1.5, found.shape[0])).sum().backward()  # every token's gradient, weighed apart
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return found.detach(), keep, grads


ROTARY = [arch for arch in ARCHITECTURES if arch not in ("falcon", "bloom")]


@pytest.mark.parametrize(("arch", "attention"), [(arch, attention) for arch in ROTARY for attention in ("sdpa", "eager")
                                                  if (arch, attention) != ("gemma2", "sdpa")])  # Gemma-2: eager only
def test_shared_prompts_give_the_rows_log_probs_and_gradients(tmp_path, arch, attention):
    model = tiny_lora_model(make_tiny_model_dir(tmp_path / arch, arch=arch), attention=attention)
    batch = _rows()
    assert shared_prompt.shareable(model, batch)
    layout = shared_prompt.shared_layout(batch)
    assert layout.input_ids.shape[0] == 3  # the masked row left out, the rest as three prompts
    apart, keep, grads = _logps_and_grads(model, batch, shared=False, temperature=0.7)
    shared, shared_keep, shared_grads = _logps_and_grads(model, batch, shared=True, temperature=0.7)
    assert torch.equal(keep, shared_keep)
    assert_close_at_scale(shared, apart, rtol=1e-5)
    assert grads.keys() == shared_grads.keys() and grads
    for name in grads:
        assert_close_at_scale(shared_grads[name], grads[name], rtol=1e-4, msg=name)


def test_a_wrong_mask_would_show(tmp_path):
    """The check above can fail: letting completions see each other changes the log-probs by far more."""
    model = tiny_lora_model(make_tiny_model_dir(tmp_path / "m"))
    batch = _rows()
    apart, _, _ = _logps_and_grads(model, batch, shared=False)
    layout = shared_prompt.shared_layout(batch)
    layout.segment = layout.segment.clamp(max=1)  # every completion one segment: they see each other
    args = {"input_ids": layout.input_ids, "position_ids": layout.position_ids, "use_cache": False,
            "attention_mask": layout.mask("sdpa", torch.float32)}
    with torch.no_grad():
        logits = model(**args).logits[layout.row, layout.column]
    wanted = batch["labels"][:, 1:][batch["labels"][:, 1:] != IGNORE]
    found = -torch.nn.functional.cross_entropy(logits, wanted, reduction="none")
    assert (found - apart).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ["bloom", "falcon"])
def test_other_position_schemes_compute_the_rows_apart(tmp_path, arch):
    model = tiny_lora_model(make_tiny_model_dir(tmp_path / arch, arch=arch))
    batch = _rows()
    assert not shared_prompt.shareable(model, batch)
    apart, _, _ = _logps_and_grads(model, batch, shared=False)
    shared, _, _ = _logps_and_grads(model, batch, shared=True)
    assert torch.equal(shared, apart)


def test_rows_past_the_sliding_window_and_rows_with_no_shared_prompt_are_computed_apart(tmp_path):
    model = tiny_lora_model(make_tiny_model_dir(tmp_path / "m", arch="mistral"))
    batch = _rows()
    assert shared_prompt.shareable(model, batch)
    causal_lm(model).config.sliding_window = int(batch["attention_mask"].sum(1).max()) - 1
    assert not shared_prompt.shareable(model, batch)
    alone = {k: v[[0, 3, 5]] for k, v in batch.items()}  # one row of each prompt
    assert shared_prompt.shared_layout(alone) is None
