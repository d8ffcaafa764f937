"""The real files in ../shared/data load and render without user code; their quirks are reported.

Every record of every file is read, converted and checked for content (so the counts of
empty answers, duplicates and unanswered turns are complete); a seeded few hundred per file
are tokenized with the embedded SmolLM2 tokenizer and their masks checked exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.config import DataConfig, ModelConfig
from lorakit.data.pipeline import build_splits
from lorakit.data.readers import read_file
from lorakit.data.shapes import to_content
from lorakit.templates import resolve_template
from tests.conftest import SHARED_DATA, needs_embedded
from tests.data.test_encode import label_runs

ENCODED_PER_FILE = 200
# name: (records, shape, empty answers, exact duplicates, conversations ending on a user turn,
#        conversations with no answer at all). Counts as the folder's README states them, where it does.
EXPECTED = {
    "alpaca_en.json": (52_002, "alpaca", 49, 0, 0, 0),
    "alpaca_en_orig_5000.json": (5_000, "alpaca", 2, 0, 0, 0),
    "alpaca_zh.json": (20_000, "alpaca", 23, 1, 0, 0),
    "huanhuan.json": (3_729, "alpaca", 0, 112, 0, 0),
    "sharegpt_zh_1k.jsonl": (1_000, "messages", 0, 0, 7, 1),
}

pytestmark = [
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder {SHARED_DATA} is absent"),
    needs_embedded,
]


def shared_files() -> list[str]:
    if not SHARED_DATA.is_dir():
        return ["(absent)"]
    return sorted(p.name for p in SHARED_DATA.iterdir() if p.suffix in (".json", ".jsonl"))


@pytest.fixture(scope="module")
def smol(embedded_cache):
    from lorakit.model.loader import load_tokenizer, resolve_model_folder

    tokenizer = load_tokenizer(resolve_model_folder(ModelConfig(cache_dir=embedded_cache)))
    return tokenizer, resolve_template(tokenizer, "auto")


@pytest.mark.slow
@pytest.mark.parametrize("name", shared_files())
def test_shared_file_loads_renders_and_reports_its_quirks(name, smol):
    tokenizer, template = smol
    path = SHARED_DATA / name
    cfg = DataConfig(train=[str(path)], max_length=2048)
    splits = build_splits(cfg, tokenizer, template, limit=ENCODED_PER_FILE)
    report = splits.reports[0]
    findings = {f.code: f for f in report.findings}

    assert report.balance(), report.lines()
    assert report.skipped == 0 and len(splits.train) == report.kept > 0
    # Tokenized: the seeded first few hundred that pass the content checks; each kept or dropped for length.
    assert report.kept + report.dropped["longer than max_length=2048"] == ENCODED_PER_FILE
    if name in EXPECTED:
        records, shape, empty, duplicates, unanswered, no_answer = EXPECTED[name]
        assert report.records == records and report.sources[0].shape == shape
        assert report.dropped["empty assistant answer"] == empty
        assert (findings["duplicates"].count if "duplicates" in findings else 0) == duplicates
        assert (findings["ends_on_user"].count if "ends_on_user" in findings else 0) == unanswered
        assert report.dropped["no assistant turn"] == no_answer
    if "empty assistant answer" in report.dropped:
        assert all(Path(o.split(", ")[0]) == path for o in report.examples["empty assistant answer"])

    # The masks of the tokenized samples: exactly the answers, each closed by <|im_end|>.
    records = {r.origin(): r for r in read_file(path)}
    for item in splits.train:
        conversation = to_content(records[item.origin], report.sources[0].shape, None)
        answers = [m["content"] for m in conversation if m["role"] == "assistant"]
        runs = [tokenizer.decode(r, skip_special_tokens=False) for r in label_runs(item.labels)]
        expected = [a + "<|im_end|>" for a in answers]
        # An answer that starts with whitespace shares its first token with the template's newline.
        assert [r.lstrip() for r in runs] == [e.lstrip() for e in expected], item.origin
        assert not any(label == tokenizer.bos_token_id for label in item.labels[:1])
