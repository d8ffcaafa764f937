"""The docs pages written from the code, so they cannot drift from it.

* ``docs/config-reference.md``: every config key from the schema (what ``lorakit config show`` prints).
* ``docs/troubleshooting.md``: every error class a user can meet (each ``LorakitError`` subclass in
  ``src/lorakit``), what it means (its docstring), and every message it is raised with, read off the
  ``raise`` statements (f-string fields shown as ``…``).

    python scripts/docs_pages.py            # write both pages
    python scripts/docs_pages.py --check    # exit 1 if either page differs from the code (tests/test_docs.py)
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "lorakit"
DOCS = REPO / "docs"
BASE = "LorakitError"
# Functions that raise a LorakitError subclass with the message they are given.
RAISING_HELPERS = {"fail": "UsageError"}
# What to do, beyond what the message says, for the errors met most.
ADVICE = {
    "ConfigError": "Fix the key the message names in the YAML file or the `--set`; `lorakit config show` "
                   "lists every key with its type and default ([Config reference](config-reference.md)). "
                   "The schema's own refusals come as 'invalid configuration in …', one line per key: "
                   "`unknown key 'lora.rnak' (did you mean lora.rank?)`, or the key, what it got and what "
                   "it expects (`lora.rank: true` is not a number).",
    "DataError": "Fix the record at the file and line the message gives, or set `data.skip_bad_records: true` "
                 "to skip such records and count them; `lorakit data inspect CONFIG` shows what would be "
                 "trained ([Data](data.md)).",
    "ModelNotFoundError": "Download the model (`hf download NAME`), unset `HF_HUB_OFFLINE`, or set "
                          "`model.download: true` ([Models from the hub](training.md#models-from-the-hub)).",
    "RunFolderError": "Add `--resume` to continue the run, `--overwrite` to start it afresh, or set another "
                      "`output_dir`.",
    "GgufExportError": "Export with another `--type`, or `lorakit merge` the run and use the folder with a "
                       "runtime that takes transformers models ([Merge and GGUF export](export.md)).",
    "OutputPathError": "Add `--overwrite` (regular files only), or choose another `--out`.",
    "QuantizationUnavailableError": "`pip install 'lorakit[qlora]'`.",
}


@dataclass(frozen=True)
class ErrorClass:
    name: str
    module: str  # path under src/lorakit
    doc: str


def _classes() -> dict[str, ErrorClass]:
    """Every subclass of LorakitError under src/lorakit, found by reading the source (nothing imported)."""
    found: dict[str, tuple[str, list[str], str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
                doc = " ".join((ast.get_docstring(node) or "").split("\n\n")[0].split())
                found[node.name] = (path.relative_to(SRC).as_posix(), bases, doc)
    errors = {BASE}
    grew = True
    while grew:
        grew = False
        for name, (_, bases, _) in found.items():
            if name not in errors and errors.intersection(bases):
                errors.add(name)
                grew = True
    errors.discard(BASE)
    return {name: ErrorClass(name, found[name][0], found[name][2]) for name in sorted(errors)}


def _text(node: ast.expr) -> str | None:
    """A message as written: literal text kept, each computed part shown as …; None if none of it is literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        if left is None and right is None:
            return None
        return (left if left is not None else "…") + (right if right is not None else "…")
    return None


def _messages(classes: dict[str, ErrorClass]) -> dict[str, list[tuple[str, str]]]:
    """For each class, (module, message) of every raise of it (and of the helpers that raise it), in source order."""
    out: dict[str, list[tuple[str, str]]] = {name: [] for name in classes}
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            name = RAISING_HELPERS.get(node.func.id, node.func.id)
            if name in classes and node.args:
                text = _text(node.args[0])
                if text is not None:
                    out[name].append((module, " ".join(text.split())))
    return out


def _cell(text: str) -> str:
    """A message as plain text in a table cell: Markdown's own characters escaped, so it shows as written."""
    for char in "\\*_[]|":
        text = text.replace(char, "\\" + char)
    return text.replace("<", "&lt;").replace("`", "'")


def troubleshooting() -> str:
    classes = _classes()
    messages = _messages(classes)
    lines = [
        "# Troubleshooting",
        "",
        "<!-- Written by scripts/docs_pages.py from the source; edit that script, not this page. -->",
        "",
        "A bad file or setting stops a lorakit command with one `error:` line and exit code 2; the line",
        "says what is wrong, where (the file and line, the key, the sample) and what to do. `lorakit --debug",
        "COMMAND` adds the traceback and lets third-party warnings and logs through. A bug in lorakit itself",
        "always shows its traceback: please report it.",
        "",
        "Below is every kind of error lorakit raises on purpose, what it means, and the messages it is",
        "raised with, read off the source (`…` stands for what is filled in at run time: a path, a key, a",
        "number). The server answers its own errors in OpenAI's shape ([Chat, generate and serve](inference.md)).",
        "",
    ]
    for cls in classes.values():
        lines += [f"## {cls.name}", "", f"{cls.doc} Raised from `{cls.module}`.", ""]
        if cls.name in ADVICE:
            lines += [f"What to do: {ADVICE[cls.name]}", ""]
        if messages[cls.name]:
            lines += ["| where | message |", "|---|---|"]
            lines += [f"| `{module}` | {_cell(text)} |" for module, text in messages[cls.name]]
            lines.append("")
        else:
            lines += ["Its messages are built where it is raised; its docstring above says what they hold.", ""]
    return "\n".join(lines)


def config_reference() -> str:
    sys.path.insert(0, str(REPO / "src"))
    from lorakit.config_file import reference_markdown

    return "\n".join([
        "# Config reference",
        "",
        "<!-- Written by scripts/docs_pages.py from the schema (src/lorakit/config/); edit that, not this page. -->",
        "",
        "Every key of a lorakit config, as `lorakit config show` prints it from the schema itself",
        "(`src/lorakit/config/`). One YAML file, every key optional; `--set key=value` overrides any key",
        "([Training](training.md#configuration) says how values are read).",
        "",
        reference_markdown(),
    ])


PAGES = {"config-reference.md": config_reference, "troubleshooting.md": troubleshooting}


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    stale = []
    for name, build in PAGES.items():
        text = build()
        path = DOCS / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"docs out of date: {', '.join(stale)}; run python scripts/docs_pages.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
