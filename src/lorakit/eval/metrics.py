"""Scores of generated answers against reference answers.

chrF and BLEU come from sacrebleu and ROUGE-L from rouge-score, so the numbers mean what
they mean in papers. Per sample they are sentence scores (used to rank which answers
changed most); over a set, chrF and BLEU are corpus scores (sacrebleu's standard, pooled
n-gram statistics) and ROUGE-L and exact match are means. All text scores are on 0-100.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU, CHRF

_CHRF = CHRF()
_BLEU = BLEU()
# Single sentences often share no 4-gram with the reference; effective order keeps their
# BLEU from collapsing to zero for that reason alone (sacrebleu's advice for sentence BLEU).
_SENTENCE_BLEU = BLEU(effective_order=True)


class _WordTokenizer:
    """Lower-cased runs of letters and digits, in any script.

    rouge-score's default tokenizer keeps only [a-z0-9], so "Zürich" becomes "z rich" and
    an answer in Greek or Russian has no tokens at all (ROUGE-L 0 whatever it says). On
    ASCII text this gives exactly the default's tokens.
    """

    _WORD = re.compile(r"[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return self._WORD.findall(text.lower())


_ROUGE = RougeScorer(["rougeL"], tokenizer=_WordTokenizer())


def normalize(text: str) -> str:
    """Case, Unicode form, surrounding quotes/punctuation and runs of spaces do not count."""
    text = unicodedata.normalize("NFKC", text).strip().lower()
    text = re.sub(r"\s+", " ", text)
    return text.strip(" .\"'`")


def exact_match(prediction: str, reference: str) -> float:
    """100 when the two are equal after :func:`normalize`, else 0."""
    return 100.0 * (normalize(prediction) == normalize(reference))


def chrf(prediction: str, reference: str) -> float:
    return _CHRF.sentence_score(prediction, [reference]).score


def bleu(prediction: str, reference: str) -> float:
    return _SENTENCE_BLEU.sentence_score(prediction, [reference]).score


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (longest common word subsequence), times 100."""
    return 100.0 * _ROUGE.score(reference, prediction)["rougeL"].fmeasure


def sentence_scores(prediction: str, reference: str) -> dict[str, float]:
    return {
        "exact_match": exact_match(prediction, reference),
        "chrf": chrf(prediction, reference),
        "bleu": bleu(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
    }


def corpus_scores(
    predictions: Sequence[str], references: Sequence[str], per_sample: Sequence[dict[str, float]]
) -> dict[str, float]:
    """Set-level scores; ``per_sample`` are the :func:`sentence_scores` already computed."""
    if not predictions:
        raise ValueError("no answers to score")
    count = len(per_sample)
    return {
        "exact_match": sum(s["exact_match"] for s in per_sample) / count,
        "chrf": _CHRF.corpus_score(list(predictions), [list(references)]).score,
        "bleu": _BLEU.corpus_score(list(predictions), [list(references)]).score,
        "rouge_l": sum(s["rouge_l"] for s in per_sample) / count,
    }


def signatures() -> dict[str, str]:
    """sacrebleu's settings strings, saved with the numbers so they can be reproduced.

    Valid once :func:`corpus_scores` has run: sacrebleu builds them from a scored corpus.
    """
    return {"chrf": str(_CHRF.get_signature()), "bleu": str(_BLEU.get_signature())}
