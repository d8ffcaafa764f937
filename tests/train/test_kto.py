"""KTO: its loss equals the formula on separately computed log-probs and TRL's KTOTrainer on the same
batch; the KL rows pair each prompt with the previous answer; rows read as labelled answers or split pairs."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from lorakit.data.encode import IGNORE_INDEX, Encoded, encode_conversation
from lorakit.data.records import DataError, Record
from lorakit.model.loss import sequence_logps
from lorakit.templates import resolve_template
from lorakit.config import PreferenceConfig
from lorakit.data.answers import Answer, EncodedAnswer, to_answers
from lorakit.train.methods.kto import KTO, collate, kl_estimate, kl_rows, kto_loss, mismatched
from lorakit.train.trainer import LorakitTrainer
from lorakit.train.preference import reference_model
from tests.conftest import make_tokenizer
from tests.train.test_preference import logp_by_hand, lora_model

# Answers of different lengths, two of each label, so every row's KL partner is a different answer.
ROWS = [
    {"prompt": "What is two plus two?", "completion": "It is four.", "label": True},
    {"prompt": "Extract the name: Maria is 34.", "completion": "Sure! The name of the person is Maria.",
     "label": False},
    {"prompt": "Hi", "completion": "Hello! How can I help you today?", "label": True},
    {"prompt": "Say the city of Maria.", "completion": "The city of Maria is Lisbon, I think.", "label": False},
]
BETA, DESIRABLE_WEIGHT, UNDESIRABLE_WEIGHT = 0.3, 1.0, 1.5


def conversation(prompt: str, completion: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def encoder():
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")
    return tokenizer, lambda conv: encode_conversation(tokenizer, template, conv, 512, train_on="last_assistant")


def encoded_answers() -> tuple:
    tokenizer, encode = encoder()
    return tokenizer, [EncodedAnswer(encode(conversation(r["prompt"], r["completion"])), r["label"]) for r in ROWS]


def lorakit_values(model, answers, pad_token_id) -> dict:
    """Log-probs, KL estimate, per-row losses and rewards, as the method computes them."""
    batch = collate(answers, pad_token_id)
    policy, _ = sequence_logps(model, batch)
    with torch.no_grad():
        policy_kl, _ = sequence_logps(model, kl_rows([batch], pad_token_id))
        with reference_model(model) as reference:
            ref, _ = sequence_logps(reference, batch)
            ref_kl, _ = sequence_logps(reference, kl_rows([batch], pad_token_id))
    kl = kl_estimate(policy_kl, ref_kl)
    losses, rewards = kto_loss(policy, ref, batch["desirable"], kl, BETA, DESIRABLE_WEIGHT, UNDESIRABLE_WEIGHT)
    return {"batch": batch, "policy": policy, "kl": kl, "losses": losses, "rewards": rewards}


def logged_by_the_method(model, answers, pad_token_id, tmp_path) -> tuple[torch.Tensor, dict[str, float]]:
    """The KTO method's loss on one batch (an eval batch: z from the batch itself) and the values the
    trainer would log for it: each value's mean over the answers it is about, then ``summarize``."""
    method = KTO(PreferenceConfig(beta=BETA, desirable_weight=DESIRABLE_WEIGHT,
                                  undesirable_weight=UNDESIRABLE_WEIGHT), max_length=None)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    step = LorakitTrainer(model=model, args=args, method=method)
    loss, values = method.loss(step, model, method.collator(pad_token_id, False)(answers), None)
    return loss, method.summarize({key: value.float().mean().item() for key, value in values.items()})


def test_the_loss_equals_the_formula_on_separately_computed_logps(tiny_model_dir):
    tokenizer, answers = encoded_answers()
    _, encode = encoder()
    model = lora_model(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()  # the reference, as a separate model
    # The KL rows by hand: each prompt with the previous row's answer, rendered as a conversation of their own.
    shifted = [encode(conversation(r["prompt"], ROWS[k - 1]["completion"])) for k, r in enumerate(ROWS)]
    kl = max(0.0, sum(logp_by_hand(model, s)[0] - logp_by_hand(base, s)[0] for s in shifted) / len(shifted))
    expected = []
    for row, answer in zip(ROWS, answers):
        r = logp_by_hand(model, answer.encoded)[0] - logp_by_hand(base, answer.encoded)[0]
        if row["label"]:
            expected.append(DESIRABLE_WEIGHT * (1 - 1 / (1 + math.exp(-BETA * (r - kl)))))
        else:
            expected.append(UNDESIRABLE_WEIGHT * (1 - 1 / (1 + math.exp(-BETA * (kl - r)))))
    found = lorakit_values(model, answers, tokenizer.pad_token_id)
    assert kl > 0.01  # the reference point is not clamped away in this batch, so it is tested
    assert found["kl"].item() == pytest.approx(kl, rel=1e-4, abs=1e-5)
    torch.testing.assert_close(found["losses"].double(), torch.tensor(expected, dtype=torch.double),
                               rtol=1e-4, atol=1e-5)
    assert any(p.grad is None for p in model.parameters())  # nothing ran backward yet
    found["losses"].mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_the_loss_and_logged_values_equal_trls_on_the_same_batch(tiny_model_dir, tmp_path):
    """TRL 1.16 computes the KTO loss inside ``KTOTrainer._compute_loss`` (there is no separate loss
    method to call): it is run here on the same model and batch, computing its own policy, reference
    and KL log-probs, on a bare trainer holding only the attributes that method reads."""
    trl = pytest.importorskip("trl")
    from trl.trainer.utils import add_fused_lm_head

    tokenizer, answers = encoded_answers()
    model = lora_model(tiny_model_dir)
    found = lorakit_values(model, answers, tokenizer.pad_token_id)
    method_loss, values = logged_by_the_method(model, answers, tokenizer.pad_token_id, tmp_path)
    torch.testing.assert_close(method_loss, found["losses"].mean(), rtol=1e-5, atol=1e-6)

    trainer = object.__new__(trl.KTOTrainer)
    trainer.model, trainer.ref_model = model, None
    trainer.args = SimpleNamespace(gradient_checkpointing_kwargs=None)
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x,
                                          unwrap_model=lambda m: m)
    trainer.precompute_ref_logps, trainer.calculate_KL, trainer.aux_loss_enabled = False, True, False
    trainer.loss_type, trainer.beta = "kto", BETA
    trainer.desirable_weight, trainer.undesirable_weight = DESIRABLE_WEIGHT, UNDESIRABLE_WEIGHT
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "mean_logits"))  # as its __init__
    batch, kl = found["batch"], kl_rows([found["batch"]], tokenizer.pad_token_id)
    trl_batch = {  # TRL's collated names; its completion mask marks the tokens lorakit trains
        "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
        "completion_mask": (batch["labels"] != IGNORE_INDEX).long(), "label": batch["desirable"],
        "KL_input_ids": kl["input_ids"], "KL_attention_mask": kl["attention_mask"],
        "KL_completion_mask": (kl["labels"] != IGNORE_INDEX).long(),
    }
    loss = trainer._compute_loss(model, trl_batch, return_outputs=False)
    torch.testing.assert_close(found["losses"].mean(), loss, rtol=1e-5, atol=1e-6)
    logged = {key: trainer._metrics["train"][key][-1] for key in values}
    # Each side sums float32 log-probs from its own output head; a margin of small rewards keeps their ~1e-6 noise.
    assert logged == pytest.approx(values, rel=1e-5, abs=1e-5)
    assert set(values) == {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                           "logps/rejected"}


def test_kl_rows_pair_each_prompt_with_the_previous_answer():
    first = Encoded([1, 2, 3, 4, 9], [IGNORE_INDEX, IGNORE_INDEX, 3, 4, 9])
    second = Encoded([5, 6, 9, 0], [IGNORE_INDEX, 6, 9, IGNORE_INDEX])  # an untrained token after the answer
    rows = mismatched([first, second])
    assert [(r.input_ids, r.labels) for r in rows] == [
        ([1, 2, 6, 9, 0], [IGNORE_INDEX, IGNORE_INDEX, 6, 9, IGNORE_INDEX]),
        ([5, 3, 4, 9], [IGNORE_INDEX, 3, 4, 9]),
    ]
    assert [r.input_ids for r in mismatched([first, second], max_length=4)] == [[1, 2, 6, 9], [5, 3, 4, 9]]
    assert [r.input_ids for r in mismatched([first])] == [first.input_ids]  # one answer: its own prompt


def test_kl_rows_are_the_whole_steps_and_match_a_rendered_conversation():
    tokenizer, answers = encoded_answers()
    _, encode = encoder()
    pad = tokenizer.pad_token_id
    whole = kl_rows([collate(answers, pad)], pad)
    # The step's micro-batches give the step's rows, not each micro-batch's own rotation.
    parts = kl_rows([collate(answers[:1], pad), collate(answers[1:3], pad), collate(answers[3:], pad)], pad)
    assert all(torch.equal(whole[key], parts[key]) for key in whole)
    for k, row in enumerate(ROWS):  # the ids a template renders for that prompt and that answer
        item = encode(conversation(row["prompt"], ROWS[k - 1]["completion"]))
        n = len(item.input_ids)
        assert whole["input_ids"][k, :n].tolist() == item.input_ids
        assert whole["labels"][k, :n].tolist() == item.labels
        assert int(whole["attention_mask"][k].sum()) == n


def test_the_formulas_worked_examples():
    losses, rewards = kto_loss(torch.tensor([-10.0, -10.0]), torch.tensor([-12.0, -12.0]),
                               torch.tensor([True, False]), 0.5, 0.1)
    torch.testing.assert_close(losses, torch.tensor([0.46257, 0.53743]), rtol=0, atol=1e-5)
    torch.testing.assert_close(rewards, torch.tensor([0.2, 0.2]))
    weighted, _ = kto_loss(torch.tensor([-10.0, -10.0]), torch.tensor([-12.0, -12.0]),
                           torch.tensor([True, False]), 0.5, 0.1, desirable_weight=2.0, undesirable_weight=0.5)
    torch.testing.assert_close(weighted, losses * torch.tensor([2.0, 0.5]))
    assert kl_estimate(torch.tensor([-20.0, -15.0]), torch.tensor([-21.0, -15.5])).item() == 0.75
    assert kl_estimate(torch.tensor([-22.0]), torch.tensor([-21.0])).item() == 0.0
    # Over processes, the mean of their means is clamped, not each one: 0.75 here, -1.75 on another.
    assert kl_estimate(torch.tensor([-20.0, -15.0]), torch.tensor([-21.0, -15.5]),
                       average=lambda mean: (mean - 1.75) / 2).item() == 0.0
    only_desirable = KTO.summarize(None, {"kl": 0.5, "rewards/chosen": 0.2, "logps/chosen": -10.0})
    assert set(only_desirable) == {"kl", "rewards/chosen", "logps/chosen"}  # no margin without both kinds


QUESTION, ANSWER = "Extract the name: Maria is 34.", '{"name": "Maria"}'
USER = {"role": "user", "content": QUESTION}
PROMPT = [{"role": "system", "content": "Be brief."}, USER]


@pytest.mark.parametrize("fields", [
    {"prompt": QUESTION, "completion": ANSWER, "label": False},
    {"prompt": [USER], "completion": [{"role": "assistant", "content": ANSWER}], "label": False},
    {"prompt": [{"from": "human", "value": QUESTION}], "completion": [{"from": "gpt", "value": ANSWER}],
     "label": False},
], ids=["strings", "turn lists", "sharegpt turns"])
def test_a_labelled_row_reads_as_one_answer(fields):
    answers = to_answers(Record(fields, "f.jsonl", "line 3"), "Be brief.")
    assert answers == [Answer(PROMPT, ANSWER, False, "f.jsonl, line 3")]
    mapped = {"question": QUESTION, "answer": ANSWER, "good": True}
    found = to_answers(Record(mapped, "f.jsonl", "line 4"), None,
                       {"prompt": "question", "completion": "answer", "label": "good"})
    assert [(a.prompt, a.completion, a.desirable) for a in found] == [([USER], ANSWER, True)]


def test_a_pair_reads_as_a_desirable_and_an_undesirable_answer():
    fields = {"prompt": QUESTION, "chosen": ANSWER, "rejected": "Sure! The name is Maria."}
    answers = to_answers(Record(fields, "f.jsonl", "line 2"), "Be brief.")
    assert [(a.prompt, a.completion, a.desirable, a.origin) for a in answers] == [
        (PROMPT, ANSWER, True, "f.jsonl, line 2"), (PROMPT, "Sure! The name is Maria.", False, "f.jsonl, line 2"),
    ]
    assert answers[0].key() != answers[1].key()


@pytest.mark.parametrize(("fields", "message"), [
    ({"prompt": "Hi", "completion": "Hello", "label": "yes"}, r"field 'label' must be true .* or false .*got 'yes'"),
    ({"prompt": "Hi", "completion": "Hello", "label": 1}, r"field 'label' must be true .*got 1"),
    ({"prompt": "Hi", "completion": "Hello"}, r"field 'label' must be true .*got nothing"),
    ({"prompt": "Hi", "label": True}, r"missing required field 'completion'"),
    ({"prompt": "Hi", "completion": [USER], "label": True}, r"'completion' must end with the assistant's answer"),
    ({"prompt": [USER, {"role": "assistant", "content": "Hm?"}], "completion": "Hello", "label": True},
     r"the prompt ends with an assistant turn"),
])
def test_a_bad_row_is_named_by_file_and_line(fields, message):
    with pytest.raises(DataError, match=r"^data/kto\.jsonl, line 7: " + message):
        to_answers(Record(fields, "data/kto.jsonl", "line 7"), None)


def test_a_kto_run_on_labelled_answers_trains_evaluates_and_scores_the_desirable_answers(tiny_model_dir, tmp_path):
    import json

    from lorakit.config_file import load_config
    from lorakit.train import recipe
    from tests.conftest import write_jsonl
    from tests.train.helpers import metrics

    data = write_jsonl(tmp_path / "answers.jsonl", ROWS * 2)
    held = write_jsonl(tmp_path / "held.jsonl", ROWS)
    out = tmp_path / "run"
    summary = recipe.run(load_config(None, [
        f"model.name={tiny_model_dir}", f"data.train={data}", f"data.eval={held}", f"output_dir={out}",
        "method=kto", "train.max_steps=2", "train.batch_size=2", "train.grad_accum=2", "train.logging_steps=1",
        "train.progress_bar=false", "eval.at_end=true", "generation.max_new_tokens=4", "data.cache_dir=null",
    ]))
    assert summary.method == "kto" and summary.steps == 2 and summary.eval_loss is not None
    logged = [r for r in metrics(out) if "loss" in r]
    assert len(logged) == 2 and all({"kl", "rewards/chosen", "rewards/rejected"} <= set(r) for r in logged)
    assert any("final_eval_kl" in r for r in metrics(out))  # evaluation estimates z from each eval batch
    report = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    # Generations are scored against the two desirable answers only: an undesirable one is no target.
    assert report["settings"]["samples_scored"] == 2


@pytest.mark.parametrize(("settings", "message"), [
    (["train.batch_size=1", "train.grad_accum=1"], r"batch_size x train.grad_accum must be 2 or more"),
    (["data.format=alpaca"], r"data.format=alpaca is not such a shape"),
    (["train.packing=true"], r"train.packing and train.group_by_length do not apply"),
])
def test_kto_settings_that_cannot_work_are_refused_when_the_config_loads(settings, message):
    from lorakit.config import ConfigError
    from lorakit.config_file import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, ["method=kto", *settings])
