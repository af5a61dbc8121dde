"""Real browser: export the tiny model to ONNX from the Export page and see its
verification (Debian Chromium + Playwright against the app's server)."""

from __future__ import annotations

import tarfile

from conftest import wait_for
from core.export import registry as exports
from core.jobs import lifecycle as jobs
from test_browser import ARTIFACTS, browser, free_port, pytestmark, start_server, stop_server  # noqa: F401


def test_export_to_onnx_in_the_browser_and_see_the_verification(tiny_llama, browser):  # noqa: F811
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    server = start_server(port)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(f"http://127.0.0.1:{port}/Export")
        expect(page.get_by_role("heading", name="Export", exact=True)).to_be_visible()
        page.locator(".st-key-exf_kind").get_by_text("ONNX (with KV cache)").click()
        page.locator(".st-key-exf_int8").get_by_text("Also int8").click()
        page.get_by_text("The same from a terminal").click()
        expect(page.get_by_text("python -m core export onnx --model tiny --name tiny-onnx --int8")).to_be_visible()
        page.locator(".st-key-export_start button").click()
        expect(page.get_by_text("Started job")).to_be_visible()

        job_id = wait_for(lambda: [j.id for j in jobs.list_jobs() if j.kind == "export_onnx"], 30, what="the job")[0]
        job = jobs.wait(job_id, timeout_s=300)
        assert job.status == "succeeded", job.log_tail
        # the page followed the export to the Exports tab and reruns by itself when the job ends
        row = exports.find("tiny-onnx")
        verdict = "Every graph verified" if exports.within_tolerance(row) else "Outside tolerance"
        expect(page.get_by_text(verdict)).to_be_visible()
        expect(page.locator('[data-testid="stPlotlyChart"]:visible').first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "export.png"), full_page=True)
        # the download is the export's folder as a .tar
        with page.expect_download() as download:
            page.get_by_role("button", name="Download tiny-onnx.tar").click()
        with tarfile.open(download.value.path()) as tar:
            names = tar.getnames()
        assert {"tiny-onnx/model.onnx", "tiny-onnx/model.int8.onnx", "tiny-onnx/tokenizer.json", "tiny-onnx/README.md"} <= set(names)
    finally:
        stop_server(server)
