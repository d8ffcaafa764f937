"""New special tokens and a new pad token: embeddings grow, train, and come back on reload."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lorakit.config_file import load_config
from lorakit.infer.session import open_session
from lorakit.model.loader import load_tokenizer
from lorakit.model.tokens import add_tokens, embedding_module_names, fit_embeddings
from lorakit.train import recipe
from tests.conftest import write_jsonl

ROWS = [
    {"instruction": "Call the tool for Lisbon.", "input": "", "output": "<tool>Lisbon</tool>"},
    {"instruction": "Call the tool for Oslo.", "input": "", "output": "<tool>Oslo</tool>"},
]


def test_add_tokens_counts_only_new_ones(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    before = len(tokenizer)
    assert add_tokens(tokenizer, ["<tool>", "<|im_end|>", "<tool>"], "<pad>") == ["<tool>", "<pad>"]
    assert len(tokenizer) == before + 2 and tokenizer.pad_token == "<pad>"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert fit_embeddings(model, tokenizer) and model.get_input_embeddings().weight.shape[0] == before + 2
    assert not fit_embeddings(model, tokenizer)  # already fits: loading twice gives the same shape
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert embedding_module_names(model) == ["embed_tokens", "lm_head"]


def test_new_token_trains_and_survives_reload(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS * 4)
    out = tmp_path / "run"
    recipe.run(load_config(None, [
        f"model.name={tiny_model_dir}", f"data.train={data}", f"output_dir={out}", "train.max_steps=4",
        "train.batch_size=4", "train.learning_rate=0.02", "train.warmup=0", "train.progress_bar=false",
        "lora.rank=4", "lora.dropout=0", "model.special_tokens=[<tool>, </tool>]", "model.pad_token=<pad>",
    ]))
    session = open_session(str(out), tmp_path)
    tokenizer = session.tokenizer
    tool = tokenizer.convert_tokens_to_ids("<tool>")
    assert tokenizer("x<tool>y", add_special_tokens=False)["input_ids"].count(tool) == 1  # one token, not pieces
    assert tokenizer.pad_token == "<pad>" and len(tokenizer) == 403

    saved = load_file(out / "adapter_model.safetensors")
    trained = saved["base_model.model.model.embed_tokens.modules_to_save.weight"]
    initial = saved["base_model.model.model.embed_tokens.original_module.weight"]
    assert trained.shape[0] == 403
    assert not torch.equal(trained[tool], initial[tool])  # the new token's embedding was trained
    live = session.model.get_input_embeddings()(torch.tensor([tool]))[0]
    assert torch.equal(live, trained[tool])  # and that trained row is what the reloaded model uses
