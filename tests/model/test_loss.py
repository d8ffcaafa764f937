"""The fast paths compute the same thing as the plain one: selective loss, chunks, packing."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lorakit.config import LoraConfig
from lorakit.data.collate import PackCollator, PadCollator
from lorakit.data.encode import encode_conversation
from lorakit.templates import resolve_template
from lorakit.model.lora import apply_lora
from lorakit.model.loss import _chunk_ce, answer_only_loss, no_logits, output_head, sequence_logps
from tests.conftest import make_tokenizer
from tests.tolerance import assert_close_at_scale

CONVERSATIONS = [
    [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "It is four."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help you today?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Extract the name: Maria is 34."},
     {"role": "assistant", "content": '{"name": "Maria"}'}],
]


def encoded():
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")
    return tokenizer, [encode_conversation(tokenizer, template, c, 512) for c in CONVERSATIONS]


def lora_model(tiny_model_dir):
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(rank=4, dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    return model.train()


def lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("chunk", [4, 10_000])
def test_selective_chunked_loss_equals_full_loss_and_gradient(tiny_model_dir, chunk):
    tokenizer, items = encoded()
    batch = PadCollator(tokenizer.pad_token_id)(items)
    model = lora_model(tiny_model_dir)
    full = model(**batch, use_cache=False).loss  # the model's own loss over all logits
    full.backward()
    expected = lora_grads(model)
    model.zero_grad()
    mine = answer_only_loss(model, output_head(model), batch, None, chunk_size=chunk)
    mine.backward()
    got = lora_grads(model)
    torch.testing.assert_close(mine, full, rtol=1e-5, atol=1e-6)
    for name in expected:
        assert_close_at_scale(got[name], expected[name], rtol=1e-4, msg=name)


def test_the_models_own_head_projects_no_position_and_the_hidden_states_are_unchanged(tiny_model_dir):
    # logits_to_keep=1 made torch copy the head's weight once per row (see no_logits); an empty
    # index must give the very same final hidden states and no logits at all.
    tokenizer, items = encoded()
    batch = PadCollator(tokenizer.pad_token_id)(items)
    args = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    model = lora_model(tiny_model_dir)
    keep = no_logits(model)
    assert isinstance(keep, torch.Tensor) and keep.numel() == 0
    with torch.no_grad():
        none = model(**args, output_hidden_states=True, logits_to_keep=keep)
        last = model(**args, output_hidden_states=True, logits_to_keep=1)
    assert none.logits.shape == (len(items), 0, model.config.vocab_size)
    torch.testing.assert_close(none.hidden_states[-1], last.hidden_states[-1], rtol=0, atol=0)


def test_sequence_logps_equal_the_full_logits_ones(tiny_model_dir):
    tokenizer, items = encoded()
    batch = PadCollator(tokenizer.pad_token_id)(items)
    model = lora_model(tiny_model_dir).eval()
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch, chunk_size=4)
        logps = torch.log_softmax(model(**batch, use_cache=False).logits[:, :-1].float(), dim=-1)
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    picked = logps.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * keep
    torch.testing.assert_close(sums, picked.sum(dim=1), rtol=1e-5, atol=1e-5)
    assert counts.tolist() == keep.sum(dim=1).tolist()


def test_remote_code_keeps_one_logit_and_a_ddp_style_wrapper_is_looked_through(tiny_model_dir):
    # Remote code may slice with -logits_to_keep, which an index tensor does not support.
    class Remote(torch.nn.Linear):
        pass

    Remote.__module__ = "transformers_modules.someone.model"
    assert no_logits(Remote(2, 2)) == 1

    class Wrapper(torch.nn.Module):  # as DDP holds the model: in .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = lora_model(tiny_model_dir)
    assert no_logits(Wrapper(model)).numel() == 0
    assert output_head(Wrapper(model)) is output_head(model)  # sequence_logps gets DDP's wrapper in training


def test_packed_rows_never_attend_across_samples(tiny_model_dir):
    tokenizer, items = encoded()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    packed = PackCollator()(items)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        row = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        start = 0
        for item in items:
            alone = model(input_ids=torch.tensor([item.input_ids]), use_cache=False).logits[0]
            torch.testing.assert_close(row[start : start + len(item.input_ids)], alone, rtol=1e-4, atol=1e-5)
            start += len(item.input_ids)


def test_packed_and_padded_batches_give_the_same_loss(tiny_model_dir):
    tokenizer, items = encoded()
    model = lora_model(tiny_model_dir)
    head = output_head(model)
    padded = answer_only_loss(model, head, PadCollator(tokenizer.pad_token_id)(items), None)
    packed = answer_only_loss(model, head, PackCollator()(items), None)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)
    # Packing hides each sample's first label; it is never an answer token anyway.
    assert all(item.labels[0] == -100 for item in items)


def test_a_bfloat16_head_takes_float32_hidden_states():
    """Under bf16 autocast a bf16 model can return float32 hidden states; the head's dtype wins."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 16, bias=False).to(torch.bfloat16)
    hidden, targets = torch.randn(5, 8), torch.randint(0, 16, (5,))
    expected = torch.nn.functional.cross_entropy(head(hidden.to(torch.bfloat16)).float(), targets, reduction="sum")
    assert torch.equal(_chunk_ce(head, hidden, targets), expected)
