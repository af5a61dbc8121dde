"""Real browser: start an OpenAI-compatible server from the Export page's Serve
tab, send its test request, and stop it (Debian Chromium + Playwright against
the app's server)."""

from __future__ import annotations

from conftest import wait_for
from core.jobs import lifecycle as jobs
from core.serving import service
from test_browser import ARTIFACTS, browser, free_port, pytestmark, start_server, stop_server  # noqa: F401


def test_serve_from_the_page_and_send_the_test_request(tiny_llama, browser):  # noqa: F811
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    app = start_server(port)
    job_id = None
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(f"http://127.0.0.1:{port}/Export")
        page.get_by_role("tab", name="Serve").click()
        port_box = page.locator(".st-key-srv_port input")
        port_box.fill("0")
        port_box.press("Enter")
        page.get_by_text("The same from a terminal").click()
        expect(page.get_by_text("python -m core serve --model tiny --port 0")).to_be_visible()
        page.locator(".st-key-serve_start button").click()
        expect(page.get_by_text("Started job")).to_be_visible()

        job_id = wait_for(lambda: [j.id for j in jobs.list_jobs() if j.kind == "serve"], 30, what="the job")[0]
        endpoint = wait_for(lambda: (jobs.get(job_id).result or {}).get("endpoint"), 120, what="the server to listen")
        # the panel redraws itself until the model is loaded
        expect(page.get_by_text("ready", exact=True)).to_be_visible()
        expect(page.get_by_text(endpoint["api_base"]).first).to_be_visible()

        page.get_by_role("tab", name="Test request").click()
        page.locator(f".st-key-srv_test_prompt_{job_id} textarea").fill("What do bees make?")
        page.locator(f".st-key-serve_test_send_{job_id} button").click()
        expect(page.get_by_text("new tokens · finish:")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "serve.png"), full_page=True)

        page.locator(f".st-key-serve_stop_{job_id} button").click()
        assert jobs.wait(job_id, timeout_s=60).status == "stopped"
        expect(page.get_by_text("No server is running")).to_be_visible()
        assert service.health(endpoint["url"])["status"] == "unreachable"
    finally:
        if job_id is not None and jobs.get(job_id).status in jobs.ACTIVE:
            jobs.cancel(job_id)
        stop_server(app)
