"""The README's Layout section names every module in src/, and only modules that exist."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _layout() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text.split("## Layout", 1)[1].split("```", 2)[1]


def test_every_module_is_in_the_layout_section():
    layout = _layout()
    src = REPO / "src" / "lorakit"
    modules = [p for p in src.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    missing = [str(p.relative_to(src)) for p in modules if not re.search(rf"(?<![\w/]){re.escape(p.name)}", layout)]
    assert missing == []


def test_the_layout_section_names_no_module_that_is_gone():
    src = REPO / "src" / "lorakit"
    named = set(re.findall(r"([a-z_]+\.py)", _layout()))
    existing = {p.name for p in src.rglob("*.py")}
    assert named - existing == set()
