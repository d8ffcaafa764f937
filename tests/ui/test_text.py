"""The page's words: English and Chinese have the same keys, and every key the page uses is in both."""

from __future__ import annotations

import re
from importlib import resources

from lorakit.ui.app import SCRIPTS
from lorakit.ui.text import EN, LANGUAGES, ZH


def test_both_languages_have_the_same_keys_and_no_empty_text():
    assert set(LANGUAGES) == {"en", "zh"}
    assert EN.keys() == ZH.keys()
    assert all(v.strip() for v in [*EN.values(), *ZH.values()])
    untranslated = [k for k in EN if EN[k] == ZH[k]]
    assert untranslated == [], untranslated


def test_every_key_the_page_uses_is_translated():
    page = resources.files("lorakit.ui").joinpath("page.html").read_text(encoding="utf-8")
    script = "".join(resources.files("lorakit.ui").joinpath(f"{name}.js").read_text(encoding="utf-8")
                     for name in SCRIPTS)
    used = set(re.findall(r'data-t="([a-z_]+)"', page)) | set(re.findall(r'\bt\("([a-z_]+)"\)', script))
    used |= {f"state_{s}" for s in ("running", "finished", "stopped", "failed", "starting")}  # t("state_" + ...)
    assert used - EN.keys() == set()
    unused = EN.keys() - used - {"title"}
    assert unused == set(), unused
