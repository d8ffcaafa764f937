"""Every model family, end to end: a tiny random model of each architecture with a tokenizer
in that family's chat format, trained through the recipe users run, then reloaded, merged
and asked for an answer that must stop at the family's end-of-turn token."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig, TrainerCallback

from lorakit.config import GenerationConfig, LoraConfig
from lorakit.data.encode import IGNORE_INDEX
from lorakit.export.merge import merge_run
from lorakit.infer.generate import generate_batch
from lorakit.infer.session import open_session
from lorakit.families import FAMILIES, recognise
from lorakit.model.lora import TargetModulesError, adapted_module_names, apply_lora
from lorakit.model.tokens import fit_embeddings
from lorakit.train import recipe
from tests.conftest import ARCHITECTURES, arch_config, make_tiny_model_dir, make_tokenizer
from tests.train.helpers import ROWS, tiny_config

# case: (architecture, tokenizer format, family, end-of-turn token, text the template puts before an answer)
CASES = {
    "llama-3": ("llama", "llama-3", "llama", "<|eot_id|>", ""),
    "tinyllama": ("llama", "zephyr", "llama", "</s>", ""),
    "qwen2": ("qwen2", "chatml", "qwen", "<|im_end|>", ""),
    "qwen3": ("qwen3", "qwen3", "qwen", "<|im_end|>", "<think>\n\n</think>\n\n"),  # data.think=keep
    "qwen3-strip": ("qwen3", "qwen3", "qwen", "<|im_end|>", ""),  # data.think=strip_empty
    "phi-3": ("phi3", "phi-3-mini", "phi3", "<|end|>", ""),
    "falcon": ("falcon", "falcon", "falcon", "<|endoftext|>", " "),
    "bloom": ("bloom", "bloom", "bloom", "</s>", " "),
    "mistral": ("mistral", "mistral", "mistral", "</s>", ""),
    "gemma": ("gemma2", "gemma", "gemma", "<end_of_turn>", ""),
}


class CaptureData(TrainerCallback):
    """Keep the rows the Trainer trains on, exactly as the recipe built them."""

    rows: list[dict] = []

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.rows = list(train_dataloader.dataset)


def _prompt(answer_row: dict) -> list[dict]:
    return [{"role": "user", "content": answer_row["instruction"]}]


@pytest.mark.parametrize("case", list(CASES))
def test_family_trains_reloads_merges_and_stops(case, tmp_path, caplog):
    arch, fmt, family_name, end, lead = CASES[case]
    family = next(f for f in FAMILIES if f.name == family_name)
    model_dir = make_tiny_model_dir(tmp_path / "model", family=fmt, arch=arch)
    think = "strip_empty" if case.endswith("-strip") else "keep"
    cfg = tiny_config(model_dir, tmp_path, "train.max_steps=3", "train.batch_size=4", "train.learning_rate=0.02",
                      "lora.rank=4", "train.save_steps=null", f"data.think={think}")
    capture = CaptureData()
    caplog.set_level(logging.INFO, logger="lorakit")
    recipe.run(cfg, hooks=[capture])
    run_dir = cfg.output_dir

    # the recipe says which family it recognised and where the adapters went
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("model family:"))
    assert line.startswith(f"model family: {family.name} (model_type {arch})")
    for name in (*family.attention, *family.mlp):
        assert name in line

    # labels: exactly each answer plus the family's end-of-turn token, and never two BOS
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    trained = set()
    for row in capture.rows:
        trained.add(tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX], skip_special_tokens=False))
        assert row["input_ids"][:2] != [tokenizer.bos_token_id] * 2
    assert trained == {lead + r["output"] + end for r in ROWS}

    # reload with plain peft (embeddings sized to the run's tokenizer first, as lorakit's loader
    # does); the adapter changed the model; the merged model equals base + adapter
    ids = torch.tensor([tokenizer("Maria is 34 and lives in Lisbon.")["input_ids"]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        rows = base.get_input_embeddings().weight.shape[0]  # rows added for the run's tokenizer start random
        fit_embeddings(base, tokenizer)
        base_logits = base.eval()(ids).logits
        tuned = PeftModel.from_pretrained(base, run_dir).eval()
        tuned_logits = tuned(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merge_run(run_dir, tmp_path / "merged", dtype="float32"))
        merged_logits = merged.eval()(ids).logits
    assert (tuned_logits - base_logits)[..., :rows].abs().max() > 1e-3
    torch.testing.assert_close(merged_logits, tuned_logits, atol=1e-4, rtol=1e-4)

    # generation: steer the head to one word, then the end-of-turn token; the answer must stop there
    session = open_session(str(run_dir), tmp_path / "cache")
    assert session.template.strip_empty_think == (think == "strip_empty")  # inference renders as training did
    end_id = session.tokenizer.convert_tokens_to_ids(end)
    word_id = session.tokenizer("Lisbon", add_special_tokens=False)["input_ids"][0]
    steps = []

    def steer(module, inputs, output):
        steps.append(1)
        output = output.clone()
        output[..., word_id if len(steps) == 1 else end_id] += 1e4
        return output

    handle = session.model.get_output_embeddings().register_forward_hook(steer)
    try:
        (answer,) = generate_batch(session.model, session.tokenizer, session.template, [_prompt(ROWS[0])],
                                   GenerationConfig(max_new_tokens=12))
    finally:
        handle.remove()
    assert answer.token_ids == [word_id, end_id]
    assert answer.finish_reason == "stop"
    assert answer.text == session.tokenizer.decode([word_id]).strip()


def _tiny(arch: str, tokenizer_format: str = "chatml") -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(arch_config(arch, make_tokenizer(tokenizer_format)))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_wrong_targets_list_the_real_module_names(arch):
    model = _tiny(arch)
    family = recognise(model.config)
    wrong = ["q_proj", "v_proj"] if "q_proj" not in family.attention else ["query_key_value"]
    with pytest.raises(TargetModulesError) as info:
        apply_lora(model, LoraConfig(target_modules=wrong))
    message = str(info.value)
    assert "match no module of this model. Its linear layers are named: " in message
    for name in (*family.attention, *family.mlp):
        assert name in message
    assert f"for this {family.name} model 'attention' = {', '.join(family.attention)}" in message


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_presets_adapt_the_family_modules(arch):
    model = _tiny(arch)
    family = recognise(model.config)
    attention = apply_lora(copy.deepcopy(model), LoraConfig(target_modules="attention", rank=2))
    assert adapted_module_names(attention) == sorted(family.attention)
    both = apply_lora(copy.deepcopy(model), LoraConfig(target_modules="attention+mlp", rank=2))
    assert adapted_module_names(both) == sorted((*family.attention, *family.mlp))
    # for the families lorakit knows, attention + MLP is every linear layer but the output head
    everything = apply_lora(model, LoraConfig(target_modules="all-linear", rank=2))
    assert adapted_module_names(everything) == adapted_module_names(both)


def test_presets_with_layers_pick_those_layers_only():
    model = apply_lora(_tiny("bloom"), LoraConfig(target_modules="attention", layers=[1], rank=2))
    adapted = {n for n, m in model.named_modules() if hasattr(m, "lora_A") and not n.endswith(("lora_A", "lora_B"))}
    assert adapted == {f"base_model.model.transformer.h.1.self_attention.{n}" for n in ("query_key_value", "dense")}


@pytest.mark.parametrize("arch", ["bloom", "phi3", "gemma2"])
def test_embeddings_keyword_trains_the_models_own_embeddings(arch):
    model = _tiny(arch)
    family = recognise(model.config)
    tied = bool(model.config.tie_word_embeddings)
    assert family.tied is None or family.tied == tied
    peft_model = apply_lora(model, LoraConfig(modules_to_save=["embeddings"], rank=2))
    full = sorted(n.split(".modules_to_save")[0].rsplit(".", 1)[-1]
                  for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n)
    # tied: one trained matrix serves both ends (so a merge keeps them tied); untied: both train
    assert full == ([family.embedding] if tied else sorted([family.embedding, family.output]))
    assert (peft_model.get_output_embeddings().weight is peft_model.get_input_embeddings().weight) == tied


def test_unknown_family_trains_all_linear_with_a_note(caplog):
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4)
    model = AutoModelForCausalLM.from_config(config)
    assert recognise(model.config) is None
    with pytest.raises(TargetModulesError, match="model_type 'gpt_neox' is none lorakit knows.*query_key_value"):
        apply_lora(copy.deepcopy(model), LoraConfig(target_modules="attention"))
    caplog.set_level(logging.INFO, logger="lorakit")
    peft_model = apply_lora(model, LoraConfig(rank=2))
    assert adapted_module_names(peft_model) == ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]
    assert "model_type 'gpt_neox' is not a family lorakit knows" in caplog.text


def test_every_family_end_token_is_a_known_end_of_turn_token():
    from lorakit.templates import KNOWN_END_TOKENS

    for family in FAMILIES:
        assert set(family.end_tokens) <= set(KNOWN_END_TOKENS)
    assert {f.name for f in FAMILIES} == {"llama", "qwen", "phi3", "falcon", "bloom", "mistral", "gemma"}
