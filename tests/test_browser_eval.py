"""Real browser: start an evaluation on the Evaluation page and see its result
chart (Debian Chromium + Playwright against `streamlit run Home.py`)."""

from __future__ import annotations

from conftest import wait_for
from core.evaluation import results as evals
from core.jobs import lifecycle as jobs
from test_browser import ARTIFACTS, browser, free_port, pytestmark, start_server, stop_server  # noqa: F401
from test_eval import setup  # noqa: F401  (the fixture: a tiny model and two data sets)


def test_evaluate_in_the_browser_and_see_the_chart(setup, browser):  # noqa: F811
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    server = start_server(port)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(f"http://127.0.0.1:{port}/Evaluation")
        expect(page.get_by_role("heading", name="Evaluation", exact=True)).to_be_visible()
        page.locator(".st-key-eval_kind").get_by_text("Generation metrics", exact=False).click()
        page.get_by_text("The same from a terminal").click()
        expect(page.get_by_text("python -m core eval generation --model tiny --dataset facts")).to_be_visible()
        page.locator(".st-key-eval_start button").click()
        expect(page.get_by_text("Started job")).to_be_visible()

        job_id = wait_for(lambda: [j.id for j in evals.eval_jobs(status=None)], 30, what="the job")[0]
        job = jobs.wait(job_id, timeout_s=180)
        assert job.status == "succeeded", job.log_tail
        # the page reruns by itself when the job ends; the Results tab has the chart
        page.get_by_role("tab", name="Results").click()
        chart = page.locator('[data-testid="stPlotlyChart"]:visible').first
        expect(chart).to_be_visible()
        expect(chart.locator(".xtick").filter(has_text="tiny").first).to_be_visible()
        expect(chart.locator(".legendtext").filter(has_text="facts").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "evaluation.png"), full_page=True)
    finally:
        stop_server(server)
