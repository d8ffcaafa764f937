"""Scores of a generated answer against a reference."""

from __future__ import annotations

import re
import unicodedata


def normalize(text: str) -> str:
    """Case, Unicode form, surrounding quotes/punctuation and runs of spaces do not count."""
    text = unicodedata.normalize("NFKC", text).strip().lower()
    text = re.sub(r"\s+", " ", text)
    return text.strip(" .\"'`")


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))
