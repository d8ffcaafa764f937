"""The documentation site: it builds strictly, and the pages written from the code match the code."""

from __future__ import annotations

import importlib.util
import re

import pytest

from lorakit.config_file import reference
from scripts import docs_pages
from tests.conftest import REPO

DOCS = REPO / "docs"


def test_the_generated_pages_match_the_code():
    for name, build in docs_pages.PAGES.items():
        assert (DOCS / name).read_text(encoding="utf-8") == build(), f"run python scripts/docs_pages.py ({name})"


def test_the_config_reference_has_every_key_of_the_schema():
    page = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `([\w.]+)` \|", page, re.M)
    assert listed == [key.name for key in reference()]


def test_every_error_class_a_user_can_meet_has_its_section_on_the_troubleshooting_page():
    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\w+)$", page, re.M))
    classes = set(docs_pages._classes())
    assert sections == classes
    # the scan finds them all: each LorakitError subclass the CLI's own errors module re-exports is among them
    assert {"ConfigError", "DataError", "GgufExportError", "UsageError", "OutputPathError"} <= classes
    assert "LorakitError" not in classes


def test_the_troubleshooting_page_carries_the_messages_as_raised():
    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    # one message of each helper path: a plain f-string raise, and fail() in the commands
    assert "--with-base goes with --adapter-only (a merged export already holds the base)" in page
    assert "unknown key" in page


def test_every_page_is_in_the_navigation_and_every_link_resolves(tmp_path, monkeypatch):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs and mkdocs-material are not installed: pip install -e '.[docs]' "
                    "(scripts/setup.sh --test installs them)")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")  # Material's notice about its own future, not about these docs
    # the strict build fails on any warning; mkdocs.yml's validation makes a page left out of the
    # navigation and a link to a missing page or anchor warnings
    try:
        build(load_config(config_file=str(REPO / "mkdocs.yml"), strict=True, site_dir=str(tmp_path / "site")))
    except Abort as err:
        pytest.fail(f"mkdocs build --strict: {err} (the warnings above say which page and link)")
    assert (tmp_path / "site" / "troubleshooting" / "index.html").is_file()
    # and it does fail on a broken link, so a pass means something
    broken = tmp_path / "docs"
    broken.mkdir()
    for page in DOCS.glob("*.md"):
        (broken / page.name).write_text(page.read_text(encoding="utf-8"), encoding="utf-8")
    with (broken / "index.md").open("a", encoding="utf-8") as f:
        f.write("\n[gone](no-such-page.md)\n")
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8").replace("docs_dir: docs", f"docs_dir: {broken}")
    (tmp_path / "mkdocs.yml").write_text(config, encoding="utf-8")
    with pytest.raises(Abort):
        build(load_config(config_file=str(tmp_path / "mkdocs.yml"), strict=True, site_dir=str(tmp_path / "site2")))
