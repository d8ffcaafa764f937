"""Links in user paths: a loop or a link to nothing is named, where Python would say 'missing' or raise."""

from __future__ import annotations

import pytest

from lorakit.config import ConfigError
from lorakit.paths import folder_loop, link_problem, resolve


def test_link_problem_names_the_link_that_is_broken(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "gone").symlink_to("nowhere")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    (tmp_path / "good").symlink_to("file")
    assert link_problem(tmp_path / "loop" / "deeper" / "f.jsonl").startswith(f"{tmp_path / 'loop'} is a symlink loop")
    assert link_problem(tmp_path / "gone") == f"{tmp_path / 'gone'} is a symlink to nowhere, which does not exist"
    # Nothing wrong with the links: a plain missing path is for the caller to call missing.
    assert link_problem(tmp_path / "good") is None and link_problem(tmp_path / "absent") is None


def test_resolve_turns_python_s_runtime_error_into_the_caller_s_error(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(ConfigError, match=f"^data.eval: {tmp_path / 'a'} is a symlink loop"):
        resolve(tmp_path / "a", ConfigError, "data.eval")
    assert resolve(tmp_path / "c", ConfigError, "data.eval") == tmp_path.resolve() / "c"


def test_folder_loop_finds_a_link_back_up_and_not_a_link_across(tmp_path):
    (tmp_path / "top" / "a").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "top" / "a" / "across").symlink_to(tmp_path / "other")
    (tmp_path / "top" / "a" / "self").symlink_to("self")  # a broken link: no folder to go into
    assert folder_loop(tmp_path / "top") is None
    (tmp_path / "other" / "back").symlink_to(tmp_path / "top")
    found, real = folder_loop(tmp_path / "top")
    assert found == tmp_path / "top" / "a" / "across" / "back" and real == str((tmp_path / "top").resolve())
