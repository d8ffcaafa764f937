"""The README is short, starts with the two commands, and every lorakit command in it (and in the
docs' getting-started page) names a real command with options it has, and files that exist."""

from __future__ import annotations

import re
import shlex

import pytest
import typer
from typer.testing import CliRunner

from lorakit.cli import app
from tests.conftest import REPO

PAGES = ("README.md", "docs/getting-started.md")


def _commands(page: str) -> list[list[str]]:
    """Each shell command in the page's bash blocks, as words (comments dropped, quoted newlines kept)."""
    text = (REPO / page).read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        pending = ""
        for line in block.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quote spans lines: read on
                continue
            if words:
                commands.append(words)
            pending = ""
    return commands


def _resolve(words: list[str]):
    """The (click) command the words name, the names that led there, and the words after them."""
    command = typer.main.get_command(app)  # typer's own click: a group is what has commands
    path: list[str] = []
    rest = words[1:]
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        path.append(rest[0])
        command, rest = command.commands[rest[0]], rest[1:]
    return command, path, rest


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    assert lines[0] == "```bash"
    assert lines[1].startswith("bash scripts/demo.sh") and lines[2].startswith("bash scripts/test.sh")
    assert "scripts/setup.sh --test" in (REPO / "scripts" / "test.sh").read_text()
    assert "bash scripts/setup.sh\n" in (REPO / "scripts" / "demo.sh").read_text()


@pytest.mark.parametrize("page", PAGES)
def test_every_command_on_the_page_exists_with_the_options_it_uses(page):
    commands = _commands(page)
    lorakit = [words for words in commands if words[0] == "lorakit"]
    assert len(lorakit) >= 6, "the quick start lost its commands"
    for words in commands:
        if words[0] == "bash":
            assert (REPO / words[1]).is_file(), words
        elif words[0] not in ("lorakit", ".", "ollama", "llama-cli", "pip"):
            pytest.fail(f"{page}: a command this test does not know how to check: {' '.join(words)}")
    seen = set()
    for words in lorakit:
        command, path, rest = _resolve(words)
        assert path and not hasattr(command, "commands"), f"{page}: no such command: {' '.join(words)}"
        options = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
        for word in rest:
            if word.startswith("--"):
                assert word.split("=", 1)[0] in options, f"{page}: lorakit {' '.join(path)} has no {word}"
            elif word.startswith("examples/"):
                assert (REPO / word).exists(), f"{page}: {word} does not exist"
        seen.add(tuple(path))
    for path in sorted(seen):  # each command's own --help, as a user would ask it
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
