"""KTO's rows: labelled answers and pairs read as answers on the one data path, each record counted once,
a pair's two answers kept together, and every unusable record named by file and line."""

from __future__ import annotations

import pytest

from lorakit.config import DataConfig
from lorakit.data.answers import ANSWERS, LABELLED
from lorakit.data.encode import IGNORE_INDEX
from lorakit.data.pipeline import build_splits
from lorakit.data.records import DataError
from lorakit.templates import resolve_template
from tests.conftest import make_tokenizer, write_jsonl

QUESTION = "Extract the name: Maria is 34."
GOOD, BAD = '{"name": "Maria"}', "Sure! The name is Maria."


def splits(tmp_path, rows, **cfg):
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")
    data = DataConfig(train=[str(write_jsonl(tmp_path / "answers.jsonl", rows))], cache_dir=None, **cfg)
    return tokenizer, build_splits(data, tokenizer, template, ANSWERS, require_samples=False)


def test_labelled_answers_train_the_answer_and_its_end_and_keep_their_label(tmp_path):
    rows = [{"prompt": QUESTION, "completion": GOOD, "label": True},
            {"prompt": QUESTION, "completion": BAD, "label": False}]
    tokenizer, found = splits(tmp_path, rows, shuffle=False)
    answers = [a for row in found.train for a in row]
    assert [a.desirable for a in answers] == [True, False]
    for answer, text in zip(answers, (GOOD, BAD)):
        trained = [t for t, label in zip(answer.encoded.input_ids, answer.encoded.labels) if label != IGNORE_INDEX]
        assert tokenizer.decode(trained) == text + "<|im_end|>"  # the answer and its end of turn, nothing else
    assert found.reports[0].sources[0].shape == LABELLED


def test_a_pair_is_one_record_read_as_a_desirable_and_an_undesirable_answer(tmp_path):
    rows = [{"prompt": QUESTION, "chosen": GOOD, "rejected": BAD}] * 3 + [{"prompt": "Hi", "chosen": "Hello!",
                                                                          "rejected": "Go away."}]
    _, found = splits(tmp_path, rows, val_fraction=0.25, seed=1)
    report = found.reports[0]
    assert report.kept == 3 and report.held_out == 1  # records are counted, not answers
    # Both answers of a pair are on the same side of the hold-out, so the eval split never sees half a pair.
    for split in (found.train, found.eval):
        for row in split:
            assert [a.desirable for a in row] == [True, False]
    assert len(found.eval) == 1


def test_unusable_records_are_dropped_and_named_by_file_and_line(tmp_path):
    rows = [
        {"prompt": QUESTION, "completion": GOOD, "label": True},
        {"prompt": QUESTION, "completion": "word " * 300, "label": False},
        {"prompt": QUESTION, "chosen": GOOD, "rejected": GOOD},
        {"prompt": QUESTION, "completion": GOOD, "label": True},
    ]
    _, found = splits(tmp_path, rows, max_length=64)
    report = found.reports[0]
    codes = {f.code: f for f in report.findings}
    where = str(tmp_path / "answers.jsonl")
    assert codes["answer_too_long"].examples == [f"{where}, line 2"]
    assert codes["identical_answers"].examples == [f"{where}, line 3"]
    assert codes["duplicates"].examples == [f"{where}, line 4 repeats {where}, line 1"]
    assert report.kept == 2 and sum(report.dropped.values()) == 2 and report.balance()


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": QUESTION, "completion": GOOD}, r"line 1: .*label.* must be true .* got nothing"),
    ({"prompt": QUESTION, "completion": GOOD, "label": "yes"}, r"line 1: .*label.* got 'yes'"),
])
def test_a_record_without_a_boolean_label_names_its_line(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        splits(tmp_path, [row])
