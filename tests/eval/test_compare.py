"""Base against tuned on a tiny model: what is scored, with which model, and the reports it writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from markdown_it import MarkdownIt
from transformers import AutoModelForCausalLM

from lorakit.config import DataConfig, EvalConfig, GenerationConfig, LoraConfig
from lorakit.config_file import load_config
from lorakit.data.encode import encode_conversation
from lorakit.data.pipeline import read_all
from lorakit.eval.compare import Scoring, answer_loss, answer_losses, compare
from lorakit.eval.results import markdown, table_rows, write_reports
from lorakit.eval.run import evaluate
from lorakit.eval.scorer import load_scorer
from lorakit.infer.generate import generate_batch
from lorakit.infer.session import Session, session_of
from lorakit.model import loss as loss_module
from lorakit.model.loader import load_tokenizer
from lorakit.model.lora import apply_lora
from lorakit.templates import resolve_template
from tests.conftest import write_jsonl

ROWS = [
    {"instruction": "Say the city of Maria.", "input": "", "output": "Lisbon", "city": "Lisbon"},
    {"instruction": "What is two plus two?", "input": "", "output": "It is four.", "city": "-"},
    {"instruction": "Extract the name.", "input": "Maria is 34.", "output": '{"name": "Maria"}', "city": "-"},
    {"instruction": "Hello", "input": "", "output": ""},  # no answer to score against
    {"instruction": "The quick brown fox jumps over the lazy dog. " * 6, "input": "", "output": "Dog."},
]
GEN = GenerationConfig(max_new_tokens=6, batch_size=2)

RECORDER = '''
CALLS = []

def same_length(prediction, reference, sample):
    CALLS.append((prediction, reference, sample))
    return len(prediction) == len(reference)
'''


@pytest.fixture
def session(tiny_model_dir) -> Session:
    """A tiny model with a LoRA adapter whose B matrices are random, so tuned differs from base."""
    torch.manual_seed(0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(rank=4, dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 2.0)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    return session_of(model, tokenizer, resolve_template(tokenizer, "auto"), has_adapter=True)


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "held_out.jsonl", ROWS)


def test_each_side_runs_its_own_model_and_unscorable_samples_are_counted(session, data, tmp_path):
    scorer_file = tmp_path / "recorder.py"
    scorer_file.write_text(RECORDER, encoding="utf-8")
    scorer = load_scorer(f"{scorer_file}:same_length")
    samples = read_all([data], DataConfig())[0]
    result = compare(session, samples, GEN, Scoring(max_length=40, scorer=scorer, examples=2))

    assert [s.origin for s in result.samples] == [f"{data}, line {n}" for n in (1, 2, 3, 5)]
    assert result.skipped == {"empty reference answer": [f"{data}, line 4"]}
    # The long prompt is cut at max_length=40 and its answer with it: scored, but no loss.
    assert result.loss_excluded == {"no token carries loss after truncation": [f"{data}, line 5"]}
    assert result.samples[3].base.loss is None and result.samples[0].base.loss is not None

    # The base column is the model without the adapter, the tuned column the model with it.
    convs = [s.conversation[:-1] for s in samples
             if s.conversation[-1]["role"] == "assistant" and s.conversation[-1]["content"].strip()]
    with session.model.disable_adapter():
        plain = [a.text for a in generate_batch(session.model, session.tokenizer, session.template, convs, GEN)]
    tuned = [a.text for a in generate_batch(session.model, session.tokenizer, session.template, convs, GEN)]
    assert [s.base.answer for s in result.samples] == plain
    assert [s.tuned.answer for s in result.samples] == tuned
    assert plain != tuned

    # The user's scorer: called once per sample and side, with the record as written, and averaged.
    calls = scorer.function.__globals__["CALLS"]
    assert len(calls) == 2 * 4
    assert calls[0] == (tuned[0], "Lisbon", ROWS[0]) and calls[4] == (plain[0], "Lisbon", ROWS[0])
    row = result.row("scorer")
    assert row.label == "same_length"
    assert row.tuned == pytest.approx(sum(len(t) == len(r) for t, r in zip(tuned, [c[1] for c in calls[:4]])) / 4)


@pytest.mark.parametrize("selective", [True, False], ids=["answer-positions-only", "full-logits"])
def test_answer_loss_is_the_plain_per_sample_loss_in_any_batch(session, data, selective, monkeypatch):
    assert loss_module.selective_loss_supported(session.model)  # the tiny Llama takes the selective path
    monkeypatch.setattr(loss_module, "selective_loss_supported", lambda model: selective)
    samples = [s for s in read_all([data], DataConfig())[0] if s.conversation[-1]["role"] == "assistant"][:3]
    encoded = [encode_conversation(session.tokenizer, session.template, s.conversation, 200) for s in samples]
    together = answer_losses(session, encoded, batch_size=3)  # padded to one width, answers projected alone
    for (loss, count), enc in zip(together, encoded):
        # The textbook definition on the sample alone: full logits, shifted labels, -100 ignored.
        with torch.no_grad():
            logits = session.model(input_ids=torch.tensor([enc.input_ids])).logits[0, :-1]
        labels = torch.tensor(enc.labels[1:])
        expected = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        assert count == sum(1 for x in enc.labels if x != -100) > 0
        assert loss == pytest.approx(float(expected), rel=1e-4)
    result = compare(session, samples, GEN, Scoring(max_length=200))
    total = sum(loss for loss, _ in together) / sum(n for _, n in together)
    assert result.row("answer_loss").tuned == pytest.approx(total, rel=1e-4)
    assert answer_loss(session, samples, max_length=200, batch_size=2) == pytest.approx(total, rel=1e-4)
    assert result.row("perplexity").tuned == pytest.approx(math.exp(total), rel=1e-4)


def test_reports_are_written_and_parse_back(session, data, tmp_path):
    out = tmp_path / "out"
    result = evaluate(session, [data], load_config(None).data, GEN, EvalConfig(examples=2), out, show_progress=False)

    raw = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert [m["key"] for m in raw["metrics"]] == ["answer_loss", "perplexity", "exact_match", "chrf", "bleu",
                                                 "rouge_l"]
    assert raw["metrics"][3]["change"] == pytest.approx(raw["metrics"][3]["tuned"] - raw["metrics"][3]["base"])
    assert len(raw["samples"]) == 4 and raw["samples"][0]["reference"] == "Lisbon"
    assert set(raw["samples"][0]["tuned"]["scores"]) == {"exact_match", "chrf", "bleu", "rouge_l"}
    assert raw["settings"]["data"] == [str(data)] and raw["settings"]["samples_read"] == 5
    assert raw["settings"]["sacrebleu"]["chrf"].startswith("nrefs:1")
    assert raw == result.as_dict()

    # eval.md: a real markdown parser finds the same table the screen shows, and the examples.
    tokens = MarkdownIt("commonmark").enable("table").parse((out / "eval.md").read_text(encoding="utf-8"))
    rows: list[tuple[str, ...]] = []
    for token in tokens:
        if token.type == "tr_open":
            rows.append(())
        elif token.type == "inline" and rows and token.level > 3:  # a cell inside a table row
            rows[-1] += (token.content,)
    assert rows[0] == ("metric", "base", "tuned", "change")
    assert rows[1:] == table_rows(result)
    fences = [t for t in tokens if t.type == "fence"]
    assert len(fences) == len(result.examples) > 0
    first = result.samples[result.examples[0]]
    assert f"reference: {first.reference}" in fences[0].content
    assert f"tuned:     {first.tuned.answer}" in fences[0].content


def test_base_model_alone_has_one_column(tiny_model_dir, data):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    plain = session_of(model, tokenizer, resolve_template(tokenizer, "auto"), has_adapter=False)
    result = compare(plain, read_all([data], DataConfig())[0], GEN, Scoring(max_length=200))
    assert all(r.tuned is None and r.base is not None for r in result.metrics)
    assert result.examples == [0, 1, 2]  # nothing changed: the first samples are shown
    assert all(row[2] == "-" and row[3] == "" for row in table_rows(result))
    text = markdown(result)
    assert "# Evaluation: base model on 4 held-out samples" in text and "## Sample answers" in text
    assert "tuned:" not in text and f"base:      {result.samples[0].base.answer}" in text
