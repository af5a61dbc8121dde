"""Real browser: start a DPO run on the RLHF page and watch its charts
(Debian Chromium + Playwright against `streamlit run Home.py`)."""

from __future__ import annotations

import json

from core.data.importer import ImportDatasetSpec
from core.jobs import lifecycle as jobs
from core.models import registry as models
from test_browser import ARTIFACTS, browser, free_port, pytestmark, start_server, stop_server  # noqa: F401


def test_dpo_from_the_rlhf_page_with_live_charts(tiny_llama, tmp_path, browser):  # noqa: F811
    from playwright.sync_api import expect

    expect.set_options(timeout=90_000)
    ARTIFACTS.mkdir(exist_ok=True)
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": "Yes, gladly.", "rejected": "No."}) + "\n"
                             for i in range(24)))
    job = jobs.wait(jobs.submit(ImportDatasetSpec(path=str(prefs), name="prefs", format="preference")), timeout_s=120)
    assert job.status == "succeeded", job.log_tail
    port = free_port()
    server = start_server(port)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_test_id("stSidebar").get_by_role("link", name="RLHF", exact=True).click()
        expect(page.get_by_role("heading", name="Alignment (RLHF)")).to_be_visible()
        expect(page.get_by_test_id("stMetric").filter(has_text="Preference data sets").first).to_contain_text("1")
        page.locator(".st-key-rl_kind").get_by_text("DPO", exact=False).click()
        page.locator(".st-key-rl_dpo_max_steps_quick input").fill("30")
        page.locator(".st-key-rl_dpo_max_steps_quick input").press("Enter")
        page.get_by_text("Copy to reproduce").click()
        expect(page.get_by_text("python -m core train dpo --model tiny --dataset prefs").first).to_be_visible()
        page.locator(".st-key-rlhf_start button").click()
        expect(page.get_by_text("Started job 3")).to_be_visible()
        # the page follows the run: its Runs tab, the live loss chart, then the end
        expect(page.get_by_role("tab", name="Runs")).to_have_attribute("aria-selected", "true")
        expect(page.locator('[data-testid="stVegaLiteChart"]:visible').first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "rlhf-running.png"), full_page=True)
        expect(page.get_by_test_id("stMetric").filter(has_text="Status").first).to_contain_text("succeeded")
        expect(page.get_by_test_id("stMetric").filter(has_text="Step").first).to_contain_text("30/30")
        panels = page.locator('[data-testid="stPlotlyChart"]:visible').first
        expect(panels.get_by_text("Implicit rewards")).to_be_visible()
        expect(panels.get_by_text("Margin (chosen - rejected)")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "rlhf.png"), full_page=True)
    finally:
        stop_server(server)
    assert jobs.get(3).status == "succeeded"
    assert models.find("tiny-dpo").source == "adapter"
