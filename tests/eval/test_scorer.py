"""Loading a user's scorer and the errors that point at what to fix."""

from __future__ import annotations

import pytest

from lorakit.config_file import load_config
from lorakit.eval.scorer import ScorerError, load_scorer

SCORERS = '''
import json

def valid_json(prediction, reference):
    try:
        json.loads(prediction)
    except ValueError:
        return False
    return True

def age_error(prediction, reference, sample):
    return abs(json.loads(prediction)["age"] - sample["age"])

def three_words(a, b, c, d):
    return 1.0

def says_yes(prediction, reference):
    return "yes"
'''


@pytest.fixture
def scorer_file(tmp_path):
    path = tmp_path / "checks.py"
    path.write_text(SCORERS, encoding="utf-8")
    return path


def test_file_scorer_with_two_or_three_arguments(scorer_file):
    two = load_scorer(f"{scorer_file}:valid_json")
    assert two.name == "valid_json" and not two.wants_sample
    assert two('{"a": 1}', "ignored", {}, "f, line 1") == 1.0
    assert two("not json", "ignored", {}, "f, line 1") == 0.0
    three = load_scorer(f"{scorer_file}:age_error")
    assert three.wants_sample
    assert three('{"age": 30}', "ignored", {"age": 34}, "f, line 1") == 4.0


def test_module_scorer():
    eq = load_scorer("operator:eq")
    assert eq("a", "a", {}, "x") == 1.0 and eq("a", "b", {}, "x") == 0.0


def test_config_resolves_a_scorer_file_next_to_the_config(tmp_path, scorer_file):
    config = tmp_path / "run.yaml"
    config.write_text("eval:\n  scorer: checks.py:valid_json\n", encoding="utf-8")
    cfg = load_config(config)
    assert cfg.eval.scorer == f"{scorer_file}:valid_json"
    assert load_config(None, ["eval.scorer=operator:eq"]).eval.scorer == "operator:eq"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "must look like 'file.py:function'"),
        ("{dir}/missing.py:fn", "missing.py does not exist"),
        ("{dir}/checks.py:nope", "has no 'nope' (it defines: age_error, says_yes, three_words, valid_json)"),
        ("{dir}/checks.py:three_words", "must take (prediction, reference) or (prediction, reference, sample)"),
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
    ],
)
def test_load_errors_say_what_is_wrong(scorer_file, spec, message):
    with pytest.raises(ScorerError) as err:
        load_scorer(spec.format(dir=scorer_file.parent))
    assert message in str(err.value)


def test_bad_return_value_and_exception_name_the_sample(scorer_file):
    with pytest.raises(ScorerError, match=r"returned 'yes' for data.jsonl, line 7; it must return a number"):
        load_scorer(f"{scorer_file}:says_yes")("a", "b", {}, "data.jsonl, line 7")
    with pytest.raises(ScorerError, match=r"failed on data.jsonl, line 3: JSONDecodeError"):
        load_scorer(f"{scorer_file}:age_error")("not json", "b", {"age": 1}, "data.jsonl, line 3")
