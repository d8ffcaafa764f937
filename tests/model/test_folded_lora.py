"""Folding the adapter into a copy of each weight computes what peft's LoRA layers compute, leaves
the weights as they were, and steps aside where it cannot.

float32: the logits equal peft's to float32 rounding (``W + s·B·A`` is one sum where peft's path adds
two products), so greedy answers are the same tokens. bf16: within bf16's rounding of the folded
weight, as a merged model's are.
"""

from __future__ import annotations

import pytest
import torch

from lorakit.config import GenerationConfig
from lorakit.infer.generate import generate_ids
from lorakit.model import folded_lora
from lorakit.model.fused_lora import fusable
from lorakit.model.loader import load_tokenizer
from tests.conftest import make_tiny_model_dir, tiny_lora_model
from tests.tolerance import assert_close_at_scale


def _layers(model):
    return [m for m in model.modules() if fusable(m)]


def _ids():
    torch.manual_seed(4)
    return torch.randint(5, 90, (3, 12))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: q, k and v carry a bias
def test_folded_logits_equal_peft_in_float32_and_the_weights_are_left_as_they_were(tmp_path, arch):
    model = tiny_lora_model(make_tiny_model_dir(tmp_path / arch, arch=arch)).eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        reference = model(_ids()).logits
        with folded_lora.folded(_layers(model)):
            assert all("forward" in vars(m) for m in _layers(model))
            folded = model(_ids()).logits
        with model.disable_adapter():
            base = model(_ids()).logits
    assert_close_at_scale(folded, reference, rtol=1e-5)  # float32 rounding of a different sum order
    assert (folded - base).abs().max() > 100 * 1e-5 * reference.abs().max()  # and the adapter is in it
    assert all("forward" not in vars(m) for m in _layers(model))  # peft's forward again
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name


def test_folded_greedy_answers_are_peft_s(tmp_path):
    folder = make_tiny_model_dir(tmp_path / "m")
    model, tokenizer = tiny_lora_model(folder).eval(), load_tokenizer(str(folder))
    prompts = [[5, 9, 13, 2, 40], [7, 7, 8]]
    gen = GenerationConfig(max_new_tokens=12, temperature=0.0, batch_size=2)
    reference = generate_ids(model, tokenizer, prompts, gen, frozenset())
    with folded_lora.folded(_layers(model)):
        folded = generate_ids(model, tokenizer, prompts, gen, frozenset())
    with model.disable_adapter():
        base = generate_ids(model, tokenizer, prompts, gen, frozenset())
    assert [a.token_ids for a in folded] == [a.token_ids for a in reference]
    assert [a.token_ids for a in base] != [a.token_ids for a in reference]  # the adapter changes the answers


def test_bf16_folded_logits_are_within_bf16_rounding(tmp_path):
    folder = make_tiny_model_dir(tmp_path / "m")
    reference_model = tiny_lora_model(folder).eval()  # float32: the exact sum
    model = tiny_lora_model(folder, torch.bfloat16).eval()
    with torch.no_grad():
        reference = reference_model(_ids()).logits
        with folded_lora.folded(_layers(model)):
            folded = model(_ids()).logits.float()
        with reference_model.disable_adapter():
            base = reference_model(_ids()).logits
    # Every weight and activation is rounded to bf16's 8 bits (relative step 2⁻⁸ = 0.4%) through two
    # layers: 5% of the largest logit holds on every CPU class (the rounding is the same everywhere;
    # only the order of sums differs), and leaving the adapter out moves the logits by more than that.
    assert_close_at_scale(folded, reference, rtol=0.05)
    assert (base - reference).abs().max() > 0.05 * reference.abs().max()


def test_only_plain_adapters_fold(tmp_path):
    folder = make_tiny_model_dir(tmp_path / "m")
    dora = tiny_lora_model(folder, use_dora=True).eval()
    assert _layers(dora) and not folded_lora.foldable(_layers(dora)) and folded_lora.fold_bytes(_layers(dora)) == 0
    plain = tiny_lora_model(folder).eval()
    with plain.disable_adapter():
        assert not folded_lora.foldable(_layers(plain))
    assert folded_lora.fold_bytes(_layers(plain)) == sum(m.get_base_layer().weight.nbytes for m in _layers(plain)) > 0


def test_folding_needs_the_copy_to_fit_in_a_quarter_of_the_free_memory(tmp_path, monkeypatch):
    model = tiny_lora_model(make_tiny_model_dir(tmp_path / "m")).eval()
    need = folded_lora.fold_bytes(_layers(model))
    monkeypatch.setattr(folded_lora, "free_bytes", lambda device: 4 * need)
    assert folded_lora.fold_fits(_layers(model), torch.device("cpu"))
    monkeypatch.setattr(folded_lora, "free_bytes", lambda device: 4 * need - 1)
    assert not folded_lora.fold_fits(_layers(model), torch.device("cpu"))
    assert folded_lora.free_bytes(torch.device("cpu")) > 0
