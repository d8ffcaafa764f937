"""Pairs of answers: every shape reads as the same pair, both sides are masked as SFT masks an answer,
and the doctor names each unusable pair by file and line."""

from __future__ import annotations

import pytest

from lorakit.config import DataConfig
from lorakit.data.encode import IGNORE_INDEX
from lorakit.data.pair_dataset import PAIRS, holds_pairs
from lorakit.data.pairs import to_pair
from lorakit.data.pipeline import build_splits
from lorakit.data.records import DataError, Record
from lorakit.templates import resolve_template
from tests.conftest import make_tokenizer, write_jsonl

QUESTION = "Extract the name: Maria is 34."
CHOSEN, REJECTED = '{"name": "Maria"}', "Sure! The name is Maria."
USER = {"role": "user", "content": QUESTION}
SHAPES = {
    "strings": {"prompt": QUESTION, "chosen": CHOSEN, "rejected": REJECTED},
    "turn lists": {"prompt": [USER], "chosen": [{"role": "assistant", "content": CHOSEN}],
                   "rejected": [{"role": "assistant", "content": REJECTED}]},
    "ultrafeedback": {"prompt": QUESTION, "chosen": [USER, {"role": "assistant", "content": CHOSEN}],
                      "rejected": [USER, {"role": "assistant", "content": REJECTED}]},
    "history": {"messages": [USER], "chosen": CHOSEN, "rejected": {"role": "assistant", "content": REJECTED}},
    "sharegpt turns": {"chosen": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": CHOSEN}],
                       "rejected": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": REJECTED}]},
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_reads_as_the_same_pair(shape):
    pair = to_pair(Record(SHAPES[shape], "f.jsonl", "line 3"), "Be brief.")
    assert pair.prompt == [{"role": "system", "content": "Be brief."}, USER]
    assert (pair.chosen, pair.rejected, pair.origin) == (CHOSEN, REJECTED, "f.jsonl, line 3")


def test_columns_are_mapped_as_for_sft():
    record = Record({"question": QUESTION, "good": CHOSEN, "bad": REJECTED}, "f.jsonl", "line 1")
    pair = to_pair(record, None, {"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert (pair.prompt, pair.chosen, pair.rejected) == ([USER], CHOSEN, REJECTED)


def test_a_malformed_pair_names_its_line():
    with pytest.raises(DataError, match=r"f.jsonl, line 7: .*'rejected' must end with the assistant's answer"):
        to_pair(Record({"prompt": "Hi", "chosen": "Hello", "rejected": [USER]}, "f.jsonl", "line 7"), None)
    with pytest.raises(DataError, match=r"line 8: no prompt"):
        to_pair(Record({"chosen": "Hello", "rejected": "Go away"}, "f.jsonl", "line 8"), None)


def splits(tmp_path, rows, **cfg):
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")
    data = DataConfig(train=[str(write_jsonl(tmp_path / "pairs.jsonl", rows))], cache_dir=None, **cfg)
    return tokenizer, template, build_splits(data, tokenizer, template, PAIRS, require_samples=False)


def test_both_sides_share_the_prompt_and_train_exactly_the_answer_and_its_end(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, USER],
             "chosen": CHOSEN, "rejected": REJECTED}]
    tokenizer, template, found = splits(tmp_path, rows)
    pair = found.train[0]
    for side, answer in ((pair.chosen, CHOSEN), (pair.rejected, REJECTED)):
        trained = [t for t, label in zip(side.input_ids, side.labels) if label != IGNORE_INDEX]
        # The answer's tokens and its end-of-turn token, nothing of the history's earlier answer.
        assert tokenizer.decode(trained) == answer + "<|im_end|>"
        positions = [k for k, label in enumerate(side.labels) if label != IGNORE_INDEX]
        assert positions == list(range(positions[0], positions[-1] + 1))  # one run: the final answer
    start = pair.chosen.labels.index(next(x for x in pair.chosen.labels if x != IGNORE_INDEX))
    assert pair.chosen.input_ids[:start] == pair.rejected.input_ids[:start]  # one shared, masked prompt
    assert all(x == IGNORE_INDEX for x in pair.rejected.labels[:start])
    report = found.reports[0]
    assert report.balance() and report.kept == 1


def test_the_doctor_names_each_unusable_pair_by_file_and_line(tmp_path):
    good = SHAPES["strings"]
    rows = [
        good,
        {"prompt": "What is two plus two?", "chosen": "It is four.", "rejected": "It is four."},
        {"chosen": [USER, {"role": "assistant", "content": CHOSEN}],
         "rejected": [{"role": "user", "content": "Another question?"}, {"role": "assistant", "content": REJECTED}]},
        {"prompt": QUESTION, "chosen": CHOSEN, "rejected": "word " * 300},
        good,
    ]
    _, _, found = splits(tmp_path, rows, max_length=64)
    report = found.reports[0]
    codes = {f.code: f for f in report.findings}
    where = str(tmp_path / "pairs.jsonl")
    assert codes["identical_answers"].examples == [f"{where}, line 2"]
    assert codes["prompts_differ"].level == "error"
    assert codes["prompts_differ"].examples == [f"{where}, line 3 (turn 0 differs)"]
    assert codes["pair_too_long"].examples == [f"{where}, line 4"] and codes["pair_too_long"].count == 1
    assert codes["duplicates"].examples == [f"{where}, line 5 repeats {where}, line 1"]
    # Every record is accounted for: two kept, three dropped with their reasons.
    assert report.kept == 2 and sum(report.dropped.values()) == 3 and report.balance()
    assert len(found.train) == 2


def test_a_pair_with_an_empty_prompt_is_dropped_and_named(tmp_path):
    rows = [SHAPES["strings"], {"prompt": "", "chosen": CHOSEN, "rejected": REJECTED},
            {"chosen": [{"role": "user", "content": " "}, {"role": "assistant", "content": CHOSEN}],
             "rejected": [{"role": "user", "content": " "}, {"role": "assistant", "content": REJECTED}]}]
    _, _, found = splits(tmp_path, rows)
    report = found.reports[0]
    where = str(tmp_path / "pairs.jsonl")
    assert report.kept == 1 and report.dropped == {"empty prompt": 2} and report.balance()
    finding = next(f for f in report.findings if f.code == "empty_prompt")
    assert finding.level == "warning" and finding.examples == [f"{where}, line 2", f"{where}, line 3"]


def test_a_pairs_file_nested_too_deeply_names_its_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(f'{{"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}}\n{{"prompt": "Hi", "chosen": '
                    f'{"[" * 100_000}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.jsonl, line 2: JSON nested too deeply to read"):
        build_splits(DataConfig(train=[str(path)], cache_dir=None), make_tokenizer("chatml"),
                     resolve_template(make_tokenizer("chatml"), "auto"), PAIRS)


def test_truncation_error_stops_on_an_over_long_pair(tmp_path):
    with pytest.raises(DataError, match=r"pairs.jsonl, line 1: .*max_length"):
        splits(tmp_path, [{"prompt": "Hi", "chosen": "word " * 300, "rejected": "No."}], max_length=64,
               truncation="error")


def test_pairs_are_told_apart_from_sft_data(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", [SHAPES["strings"]])
    sft = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    assert holds_pairs([str(pairs)], DataConfig()) and not holds_pairs([str(sft)], DataConfig())
    with pytest.raises(DataError, match=r"s.jsonl, line 1: a preference run .* needs pairs"):
        build_splits(DataConfig(train=[str(sft)], cache_dir=None), make_tokenizer("chatml"),
                     resolve_template(make_tokenizer("chatml"), "auto"), PAIRS)


def test_inspection_shows_both_sides_and_the_findings(tmp_path):
    from lorakit.data.inspection import inspect_data

    tokenizer = make_tokenizer("chatml")
    rows = [SHAPES["strings"], {"prompt": "Hi", "chosen": "Hello.", "rejected": "Hello."}]
    data = DataConfig(train=[str(write_jsonl(tmp_path / "pairs.jsonl", rows))], cache_dir=None)
    result = inspect_data(data, tokenizer, resolve_template(tokenizer, "auto"), model_name="tiny", samples=1,
                          kind=PAIRS)
    assert [s.split for s in result.samples] == ["train chosen", "train rejected"]
    trained = ["".join(seg.text for seg in s.segments if seg.trained) for s in result.samples]
    assert trained == [CHOSEN + "<|im_end|>", REJECTED + "<|im_end|>"]
    assert [f.code for f in result.reports[0].findings if f.code == "identical_answers"] == ["identical_answers"]
    assert result.lengths[0].stats["answer"]["max"] > 0
