"""Text metrics on cases small enough to check by hand."""

import math

import pytest

from lorakit.eval.metrics import bleu, chrf, corpus_scores, exact_match, normalize, rouge_l, sentence_scores


def test_normalize_ignores_case_space_and_outer_punctuation():
    assert normalize('  "Paris."  ') == "paris"
    assert normalize("A\n  b\tc") == "a b c"
    assert normalize("\uff21") == "a"  # full-width letters fold (NFKC)


def test_exact_match_is_0_or_100_after_normalizing():
    assert exact_match('{"name": "Maria"}', '{"name": "Maria"}') == 100.0
    assert exact_match("Paris", "paris.") == 100.0
    assert exact_match("  The  answer\nis 4 ", "the answer is 4") == 100.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert exact_match('{"age": 34}', '{"age": 35}') == 0.0


def test_chrf_identical_is_100_and_disjoint_is_0():
    assert chrf("Bonjour tout le monde", "Bonjour tout le monde") == pytest.approx(100.0)
    assert chrf("xyz", "abc") == 0.0
    assert 0 < chrf("Bonjour le monde", "Bonjour tout le monde") < 100


def test_bleu_hand_case_brevity_penalty_only():
    # Every 1- to 4-gram of "a b c d" is in "a b c d e": all precisions are 1, so BLEU is the
    # brevity penalty exp(1 - 5/4) alone.
    expected = 100 * math.exp(1 - 5 / 4)
    assert bleu("a b c d", "a b c d e") == pytest.approx(expected)
    assert bleu("a b c d e", "a b c d e") == pytest.approx(100.0)
    # Pooled over a corpus the lengths add up (8 against 10): the same penalty.
    per = [sentence_scores("a b c d", "a b c d e")] * 2
    assert corpus_scores(["a b c d"] * 2, ["a b c d e"] * 2, per)["bleu"] == pytest.approx(expected)


def test_rouge_l_hand_case():
    # LCS of "the cat on mat" in "the cat sat on the mat" is 4 words: P = 4/4, R = 4/6, F1 = 0.8.
    assert rouge_l("the cat on mat", "the cat sat on the mat") == pytest.approx(80.0)
    assert rouge_l("The cat.", "the cat") == pytest.approx(100.0)


def test_rouge_l_counts_words_in_any_script():
    # rouge-score's default tokenizer would see no words here and score 0.
    assert rouge_l("Καλημέρα κόσμε", "καλημέρα κόσμε") == pytest.approx(100.0)
    assert rouge_l("Zürich ist schön", "Zürich ist groß") == pytest.approx(100 * 2 / 3)


def test_corpus_scores_average_exact_match_and_rouge():
    preds, refs = ["Paris", "Rome", "Oslo x"], ["paris", "Madrid", "Oslo"]
    per = [sentence_scores(p, r) for p, r in zip(preds, refs)]
    totals = corpus_scores(preds, refs, per)
    assert totals["exact_match"] == pytest.approx(100 / 3)
    assert totals["rouge_l"] == pytest.approx((100 + 0 + 100 * 2 * (1 / 2) / (1 / 2 + 1)) / 3)
    assert set(totals) == {"exact_match", "chrf", "bleu", "rouge_l"}
