"""A GRPO run's sample of completions in a real browser: the latest step's table, an earlier step picked,
and text from the run shown as text (a completion holding HTML is not markup)."""

from __future__ import annotations

import json

import pytest

from lorakit.serve.in_process import running
from lorakit.ui.app import create_app
from tests.browser import chromium, needs_chromium

pytestmark = [needs_chromium, pytest.mark.slow]
MARKUP = "<b id='injected'>bold</b>"


def test_the_sample_table_shows_the_latest_step_and_an_earlier_one_as_text(access, grpo_run):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import Select, WebDriverWait

    # A later step's sample whose completion is HTML: the page must show the characters, not a bold element.
    late = {"step": 9, "source": "train.jsonl, line 1", "prompt": "Say hi", "completion": MARKUP,
            "rewards": {"vowels": 0.5, "skips_some": None, "length": 1.0}, "reward": 1.5, "advantage": 0.25,
            "truncated": True}
    (grpo_run.completions / "step-000009.jsonl").write_text(json.dumps(late) + "\n", encoding="utf-8")
    step2 = [json.loads(line) for line in (grpo_run.completions / "step-000002.jsonl").read_text().splitlines()]
    with running(create_app(access)) as url, chromium() as browser:
        wait = WebDriverWait(browser, 60, poll_frequency=0.2,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        browser.get(f"{url}/?token={access.token}")
        wait.until(lambda b: b.find_elements("css selector", "tr[data-run='g'] .open-run"))
        browser.find_element("css selector", "tr[data-run='g'] .open-run").click()
        wait.until(lambda b: b.find_element("id", "sample-box").is_displayed())
        wait.until(lambda b: len(b.find_elements("css selector", "#sample-table tbody tr")) == 1)
        header = [th.text for th in browser.find_elements("css selector", "#sample-table th")]
        assert header == ["prompt", "completion", "vowels", "skips_some", "length", "reward", "advantage",
                          "cut at max length"]
        cells = [td.text for td in browser.find_elements("css selector", "#sample-table tbody td")]
        assert cells == ["Say hi", MARKUP, "0.5000", "-", "1", "1.5000", "0.2500", "yes"]
        assert not browser.find_elements("id", "injected")
        picker = Select(browser.find_element("id", "sample-step"))
        assert [o.get_attribute("value") for o in picker.options] == ["", "9", "3", "2", "1"]
        picker.select_by_value("2")
        wait.until(lambda b: [td.text for td in b.find_elements("css selector", "#sample-table tbody td:nth-child(2)")]
                   == [r["completion"].strip() for r in step2])
        assert Select(browser.find_element("id", "sample-step")).first_selected_option.get_attribute("value") == "2"
