"""The dashboard in a real browser on the embedded model: the whole round a user makes.

Create a 3-step run from the form, see the loss chart gain points while it trains, stop it,
see it listed as stopped with a checkpoint, resume it to the end, preview the data with the
loss-carrying text highlighted, and chat with the run: the greedy answers of a two-turn
conversation are the ones ``lorakit generate`` prints. The screenshots go to $LORAKIT_UI_SHOTS when set (``docs/img``
for the docs), else to the test's own folder.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lorakit.config_file import load_config
from lorakit.run import RunFolder
from lorakit.serve.in_process import running
from lorakit.ui.app import create_app
from lorakit.ui.guard import Access
from tests.browser import chromium, needs_chromium
from tests.conftest import needs_embedded

pytestmark = [needs_embedded, needs_chromium, pytest.mark.slow]
DEMO = Path(__file__).parents[2] / "examples" / "demo"
PROMPT = "Extract the person's name, age and city from the text. Answer with JSON only.\n\nLina, 29, lives in Porto."
FOLLOW_UP = "Now only her city, as JSON."


def count(browser, selector: str = "#loss-chart polyline") -> int:
    lines = browser.find_elements("css selector", selector)
    return int(lines[0].get_attribute("data-count")) if lines else 0


def fill(browser, knob: str, value: str) -> None:
    field = browser.find_element("id", "knob-" + knob.replace(".", "-"))
    field.clear()
    field.send_keys(value)


def shoot(browser, path: Path, element=None, height: int | None = None) -> None:
    """A screenshot for the docs: the window as tall as the page (or ``height``), so nothing is cut off."""
    if height is None:
        height = min(max(browser.execute_script("return document.documentElement.scrollHeight") + 150, 900), 4000)
    browser.set_window_size(1200, height)
    assert element.screenshot(str(path)) if element is not None else browser.save_screenshot(str(path))
    browser.set_window_size(1200, 900)


def test_a_run_made_watched_stopped_resumed_previewed_and_chatted_with(embedded_cache, tmp_path):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("LORAKIT_UI_SHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    runs, data = tmp_path / "runs", tmp_path / "data"
    runs.mkdir()
    data.mkdir()
    lines = (DEMO / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (data / "train.jsonl").write_text("".join(itertools.islice(lines, 32)), encoding="utf-8")
    access = Access(runs, [data])
    with running(create_app(access)) as url, chromium() as browser:
        # The page redraws what changed: an element found a moment ago may be gone at the next look.
        wait = WebDriverWait(browser, 240, poll_frequency=0.2,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        browser.get(f"{url}/?token={access.token}")
        wait.until(lambda b: b.find_element("tag name", "body").get_attribute("data-ready") == "true")
        assert "token" not in browser.current_url

        browser.find_element("id", "nav-new").click()
        name = browser.find_element("id", "run-name")
        name.clear()
        name.send_keys("demo3")
        for knob, value in (("data.train", str(data / "train.jsonl")), ("train.max_steps", "3"),
                            ("train.batch_size", "4"), ("data.max_length", "160"), ("train.logging_steps", "1"),
                            ("train.learning_rate", "1e-3")):
            fill(browser, knob, value)
        browser.find_element("id", "extra").send_keys(f"model.cache_dir={embedded_cache}\ndata.cache_dir=null")

        browser.find_element("id", "do-preview").click()  # the data doctor and samples, before training
        wait.until(lambda b: b.find_elements("css selector", "#samples .sample .loss") or b.find_element(
            "id", "message").is_displayed())
        assert not browser.find_element("id", "message").is_displayed(), browser.find_element("id", "message").text
        highlighted = browser.find_elements("css selector", "#samples .sample .loss")
        assert '{"name": ' in highlighted[0].text  # the answer carries loss ...
        sample = browser.find_element("css selector", "#samples .sample").text
        assert "Extract the person's name" in sample and "Extract" not in highlighted[0].text  # ... the prompt not
        shoot(browser, shots / "ui-preview.png", browser.find_element("id", "preview"))

        browser.find_element("id", "show-config").click()
        wait.until(lambda b: b.find_element("id", "config-text").is_displayed())
        assert "max_steps: 3" in browser.find_element("id", "config-text").text
        browser.find_element("id", "start").click()
        wait.until(lambda b: count(b) >= 1)  # the first step's loss is drawn while the run trains
        browser.find_element("id", "stop").click()
        wait.until(lambda b: b.find_element("id", "view-run").get_attribute("data-state") == "stopped")
        stopped_at = count(browser)
        assert 1 <= stopped_at < 3
        assert "checkpoint-" in browser.find_element("id", "run-ckpts").text

        browser.find_element("id", "nav-runs").click()
        # The list is redrawn only when a run changes: the stopped run's row stays put.
        row = wait.until(lambda b: b.find_elements("css selector", "tr[data-run='demo3'][data-state='stopped']"))[0]
        assert "checkpoint-" in row.find_element("css selector", ".checkpoints").text
        shoot(browser, shots / "ui-runs.png", height=380)
        browser.find_element("id", "lang").click()  # every label in Chinese, from the same page
        wait.until(lambda b: b.find_element("id", "nav-new").text == "新建训练")
        stopped = "tr[data-run='demo3'] .state-stopped"
        wait.until(lambda b: b.find_element("css selector", stopped).text.startswith("已停止"))
        shoot(browser, shots / "ui-runs.zh.png", height=380)
        browser.find_element("id", "lang").click()
        wait.until(lambda b: b.find_element("css selector", stopped).text.startswith("stopped"))

        browser.find_element("css selector", "tr[data-run='demo3'] .open-run").click()
        wait.until(lambda b: not b.find_element("id", "resume").get_property("disabled"))
        browser.find_element("id", "resume").click()
        wait.until(lambda b: b.find_element("id", "view-run").get_attribute("data-state") in ("finished", "failed"))
        assert browser.find_element("id", "view-run").get_attribute("data-state") == "finished", \
            browser.find_element("id", "run-error").text
        wait.until(lambda b: count(b) == 3)  # the chart gained the resumed steps' points
        assert browser.save_screenshot(str(shots / "ui-run.png"))

        browser.find_element("id", "chat-input").send_keys(PROMPT)
        browser.find_element("id", "chat-base").click()  # the base model's answer beside
        browser.find_element("id", "chat-send").click()
        wait.until(lambda b: b.find_elements("css selector", ".answer-base[data-done='true']"))
        tuned = browser.find_element("css selector", ".answer-tuned")
        assert int(tuned.get_attribute("data-chunks")) > 1, "the answer came in one piece, not streamed"
        answer = tuned.find_element("css selector", ".answer-text").text
        shoot(browser, shots / "ui-chat.png", browser.find_element("id", "chat-answers"))
        # A second question carries the first and its answer; New conversation clears them.
        browser.find_element("id", "chat-base").click()
        browser.find_element("id", "chat-input").send_keys(FOLLOW_UP)
        wait.until(lambda b: b.find_element("id", "chat-send").is_enabled())
        browser.find_element("id", "chat-send").click()
        wait.until(lambda b: len(b.find_elements("css selector", ".answer-tuned[data-done='true']")) == 2)
        second = browser.find_elements("css selector", ".answer-tuned .answer-text")[1].text
        asked = browser.find_elements("css selector", ".turn-user")
        assert len(asked) == 2 and asked[1].text == FOLLOW_UP
        browser.find_element("id", "chat-new").click()
        assert browser.find_element("id", "chat-answers").text == ""

        # Compare: a second run, the first one's folder (its name and output_dir too) with another learning rate.
        shutil.copytree(runs / "demo3", runs / "other", ignore=shutil.ignore_patterns(".lorakit.lock"))
        saved = runs / "other" / "lorakit.yaml"
        saved.write_text(saved.read_text().replace("learning_rate: 0.001", "learning_rate: 0.002"))
        browser.find_element("id", "nav-runs").click()
        wait.until(lambda b: b.find_elements("css selector", "tr[data-run='other'] .pick"))
        for name in ("demo3", "other"):
            browser.find_element("css selector", f"tr[data-run='{name}'] .pick").click()
        browser.find_element("id", "compare").click()
        wait.until(lambda b: len(b.find_elements("css selector", "#compare-chart polyline")) == 2)
        differing = browser.find_element("id", "compare-settings").text
        assert differing.splitlines() == ["demo3 other", "train.learning_rate 0.001 0.002"]  # only what differs

    run = RunFolder(runs / "demo3")
    # The file the form wrote is the config the run trained with, as lorakit train resolves it.
    assert run.read_config() == load_config(runs / ".ui" / "demo3" / "config.yaml")
    assert run.read_summary().steps == 3
    printed = subprocess.run([sys.executable, "-m", "lorakit", "generate", str(run.path), "--prompt", PROMPT,
                              "--max-new-tokens", "64", "--cache-dir", str(embedded_cache), "--no-progress"],
                             capture_output=True, text=True, check=True)
    assert answer == printed.stdout.rstrip("\n")
    conversation = tmp_path / "conversation.jsonl"
    conversation.write_text(json.dumps({"messages": [{"role": "user", "content": PROMPT}, {
        "role": "assistant", "content": answer}, {"role": "user", "content": FOLLOW_UP}]}) + "\n")
    printed = subprocess.run([sys.executable, "-m", "lorakit", "generate", str(run.path), "--file", str(conversation),
                              "--max-new-tokens", "64", "--cache-dir", str(embedded_cache), "--no-progress"],
                             capture_output=True, text=True, check=True)
    assert second == printed.stdout.rstrip("\n")
