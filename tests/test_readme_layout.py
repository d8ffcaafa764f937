"""The docs' Layout page names every module in src/ at its path, and only modules that exist; the README's
short Layout names every training method module."""

from __future__ import annotations

import re

from tests.conftest import REPO

SRC = REPO / "src" / "lorakit"


def _layout(page: str = "docs/layout.md") -> str:
    text = (REPO / page).read_text(encoding="utf-8")
    return text.split("# Layout", 1)[1].split("```", 2)[1]


def _named_paths(page: str = "docs/layout.md") -> set[str]:
    """Each ``x.py`` the tree under ``src/lorakit/`` names, as a path: an entry's folder, then the name.

    An entry starts two spaces in (``  train/ ...`` or ``  run.py ...``); deeper lines continue it.
    A name written with its folder (``train/plot.py``) stands for that path wherever it is.
    """
    lines = _layout(page).splitlines()
    start = lines.index("src/lorakit/") + 1
    named: set[str] = set()
    folder = ""
    for line in lines[start:]:
        if not line.startswith(" "):
            break  # the tree of src/lorakit/ ends where examples/ and tests/ begin
        entry = re.match(r"  (\S+)", line)
        if entry is not None:
            folder = entry.group(1) if entry.group(1).endswith("/") else ""
        for name in re.findall(r"(?<![\w/.])([\w/]*\w\.py)\b", line):
            named.add(name if "/" in name else folder + name)
    # A package's __init__.py may be named for what it holds; the module check leaves them out.
    return {name for name in named if not name.endswith("__init__.py")}


def _modules() -> set[str]:
    return {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}


def test_every_module_is_in_the_layout_section_at_its_path():
    assert sorted(_modules() - _named_paths()) == []


def test_the_layout_section_names_no_module_that_is_gone():
    assert sorted(_named_paths() - _modules()) == []


def test_the_readme_layout_names_every_training_method_module_and_nothing_that_is_gone():
    methods = {m for m in _modules() if m.startswith("train/methods/")}
    named = _named_paths("README.md")
    assert sorted(methods - named) == []
    assert sorted(named - _modules()) == []
