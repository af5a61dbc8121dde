"""Real browser: headless Debian Chromium driven by Playwright against a real
`streamlit run app.py` server (the pages and their live API). Creates a tiny
model from the Models page, sees its job succeed and the model listed; then
restarts the server and sees the state come back from the database, and the
dashboard follow a job live."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, wait_for
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (scripts/test.sh installs it)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(healthy, 60, 0.3, "the Streamlit server to answer")
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_create_model_in_the_browser_and_survive_a_restart(home, browser):
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    server = start_server(port)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/")
        expect(page.get_by_role("heading", name="LLM Development Platform")).to_be_visible()
        expect(page.get_by_text("No job is running.")).to_be_visible()

        page.get_by_test_id("stSidebar").get_by_role("link", name="Models", exact=True).click()
        expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible()
        page.get_by_role("tab", name="Create from scratch").click()
        page.locator(".st-key-create_name input").fill("browser-tiny")
        page.get_by_role("button", name="Create model").click()
        expect(page.get_by_text("Started job 1")).to_be_visible()

        # the job runs in its own process; the live panel and the table follow it
        job = jobs.wait(1, timeout_s=120)
        assert job.status == "succeeded", job.log_tail
        page.get_by_role("tab", name="Your models").click()
        expect(page.get_by_test_id("stMetric").filter(has_text="Status").first).to_contain_text("available")
        expect(page.get_by_text("browser-tiny (scratch: gpt2/tiny) by job 1")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)

        # restart the server: nothing is lost, pages re-read the database
        stop_server(server)
        server = start_server(port)
        page.goto(f"http://127.0.0.1:{port}/Jobs")
        expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
        expect(page.get_by_text("python -m core models create --name browser-tiny")).to_be_visible()
        expect(page.get_by_test_id("stMetric").filter(has_text="Status").first).to_contain_text("succeeded")
        polls, reruns = [], []
        page.on("request", lambda r: polls.append(r.url) if "/api/live" in r.url else None)
        page.on("websocket", lambda ws: ws.on("framesent", lambda frame: reruns.append(frame)))
        page.goto(f"http://127.0.0.1:{port}/")
        expect(page.get_by_test_id("stMetric").filter(has_text="Models").first).to_contain_text("1")
        expect(page.get_by_text("Model 'browser-tiny' is ready")).to_be_visible()
        expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)

        # an idle page asks the server what changed every 2 s and does
        # not rerun (not even every 10 s: no elapsed time is shown), so nothing is
        # re-sent to the browser while nothing moves
        page.wait_for_timeout(1000)  # (Playwright's events arrive while it waits)
        polls.clear(), reruns.clear()
        page.wait_for_timeout(11_000)
        assert len(polls) >= 4 and reruns == [], (polls, reruns)
        assert_live_api(port)

        # a job started elsewhere (here: this test process) shows up on the open
        # dashboard, moves, and ends there, with no reload
        job_id = jobs.submit(CreateModelSpec(name="from-elsewhere", arch="llama", size="small"))
        expect(page.get_by_test_id("stProgress").filter(has_text=f"#{job_id} Create llama (small)")).to_be_visible()
        assert reruns  # the panel asked for its rerun (the frames counted above are those requests)
        page.screenshot(path=str(ARTIFACTS / "dashboard-running.png"), full_page=True)
        assert jobs.wait(job_id, timeout_s=120).status == "succeeded"
        expect(page.get_by_text("No job is running.")).to_be_visible()
        expect(page.get_by_test_id("stMetric").filter(has_text="Models").first).to_contain_text("2")
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    finally:
        stop_server(server)
    assert [m.name for m in models.list_models()] == ["browser-tiny", "from-elsewhere"]


def assert_live_api(port: int) -> None:
    """GET /api/live over HTTP answers the state the pages draw from (ui.live),
    and refuses a bad job id with the reason."""
    from ui import live

    def get(query: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/live{query}", timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert get("") == (200, live.answer())
    assert get("?job=1") == (200, live.answer(1))
    assert live.answer(1)["state"] != live.answer()["state"]
    status, body = get("?job=1&view=1")  # a run panel's numbers, drawn by its live component
    assert status == 200 and body["view"]["figures"][0] == ["Status", "succeeded"] and body["view"]["line"].startswith("100% · "), body
    assert get("?job=one") == (400, {"error": "job must be a job id (a number), not 'one'"})
    assert get("?job=99") == (404, {"error": "there is no job 99"})


def test_import_a_sample_and_train_with_lora_in_the_browser(home, browser):
    from playwright.sync_api import expect

    expect.set_options(timeout=90_000)
    assert jobs.wait(jobs.submit(CreateModelSpec(name="tiny", size="tiny")), timeout_s=120).status == "succeeded"
    port = free_port()
    server = start_server(port)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        reruns = []  # what the page sends the server: rerun requests, widget values
        page.on("websocket", lambda ws: ws.on("framesent", lambda frame: reruns.append(frame)))
        page.goto(f"http://127.0.0.1:{port}/Datasets")
        page.get_by_role("tab", name="Import").click()
        expect(page.get_by_text("All 334 rows are valid (instruction).")).to_be_visible()
        page.get_by_role("button", name="Import", exact=True).click()
        expect(page.get_by_text("Started job 2")).to_be_visible()
        assert jobs.wait(2, timeout_s=120).status == "succeeded"
        # the list follows the job's end by itself (the live panel reruns the page)
        page.get_by_role("tab", name="Your data sets").click()
        expect(page.get_by_text("sample-instructions").first).to_be_visible(timeout=10_000)

        page.get_by_test_id("stSidebar").get_by_role("link", name="Training", exact=True).click()
        expect(page.get_by_role("heading", name="Fine-tuning")).to_be_visible()
        page.locator(".st-key-sft_steps_quick input").fill("250")
        page.locator(".st-key-sft_steps_quick input").press("Enter")
        page.get_by_role("button", name="Start training").click()
        expect(page.get_by_text("Started job 3")).to_be_visible()
        # the page follows: the Runs tab opens on the run just started
        expect(page.get_by_role("tab", name="Runs")).to_have_attribute("aria-selected", "true")
        # while it runs, its numbers move at each poll, drawn by the live component,
        # with far fewer reruns of the panel (each costs the browser) than steps shown
        shown = []
        reruns.clear()
        live_step = page.locator('.figure[data-label="Step"] .value')
        while jobs.get(3).status in jobs.ACTIVE:
            text = live_step.all_inner_texts()
            if text and (not shown or shown[-1] != text[0]):
                shown.append(text[0])
                if len(shown) == 4:
                    page.screenshot(path=str(ARTIFACTS / "training-live.png"), full_page=True)
            page.wait_for_timeout(200)
        assert len(shown) >= 4 and len(reruns) < len(shown), (shown, len(reruns))
        # the loss chart fills in while the run goes, and the run ends well
        expect(page.locator('[data-testid="stVegaLiteChart"]:visible').first).to_be_visible()
        expect(page.get_by_test_id("stMetric").filter(has_text="Status").first).to_contain_text("succeeded")
        expect(page.get_by_test_id("stMetric").filter(has_text="Step").first).to_contain_text("250/250")
        page.screenshot(path=str(ARTIFACTS / "training.png"), full_page=True)
    finally:
        stop_server(server)
    assert jobs.get(3).status == "succeeded"
    assert models.find("tiny-lora-sample-instructions").source == "adapter"


def test_chat_in_the_playground_streams_a_reply(home, browser):
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    for name in ("tiny", "other"):
        job = jobs.wait(jobs.submit(CreateModelSpec(name=name, arch="llama", size="tiny", seed=3)), timeout_s=120)
        assert job.status == "succeeded", job.log_tail
    port = free_port()
    server = start_server(port)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_test_id("stSidebar").get_by_role("link", name="Playground", exact=True).click()
        expect(page.get_by_role("heading", name="Playground")).to_be_visible()
        expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
        chat = page.get_by_role("tabpanel", name="Chat")
        picker = chat.get_by_role("combobox", name="Model", exact=True)
        picker.click()
        page.get_by_role("option", name="#1 tiny").click()
        expect(picker).to_have_value("#1 tiny")
        chat.get_by_text("System prompt and generation settings").click()
        page.locator(".st-key-chat_max_new input").fill("240")
        page.locator(".st-key-chat_max_new input").press("Enter")
        expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
        # the tiny model writes 240 tokens in well under a second: record every state
        # of the reply the browser shows to see it grow piece by piece
        page.evaluate("""() => {
            window.replyStates = [];
            new MutationObserver(() => {
                const msgs = document.querySelectorAll('[data-testid="stChatMessage"]');
                if (msgs.length >= 2) window.replyStates.push(msgs[1].innerText);
            }).observe(document.body, {subtree: true, childList: true, characterData: true});
        }""")
        prompt = page.locator(".st-key-chat_prompt textarea")
        prompt.fill("Hello, who are you?")
        prompt.press("Enter")
        reply = chat.get_by_test_id("stChatMessage").nth(1)
        expect(reply.get_by_test_id("stCaptionContainer")).to_contain_text("tokens/s")
        expect(reply.get_by_test_id("stCaptionContainer")).to_contain_text("new tokens")
        assert reply.get_by_test_id("stMarkdownContainer").first.inner_text().strip()
        growing = [t for t in page.evaluate("window.replyStates") if "▌" in t]
        assert len(set(growing)) > 3, f"the reply did not stream: {len(growing)} partial states"
        expect(reply).not_to_contain_text("▌")
        expect(page.get_by_test_id("stSidebar")).to_contain_text("· cpu · used")
        page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    finally:
        stop_server(server)


def test_no_page_asks_another_host(home, browser):
    """Nothing leaves the machine: every request of every page (scripts, fonts,
    icons, the favicon) goes to the app's own server."""
    from urllib.parse import urlparse

    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    port = free_port()
    server = start_server(port)
    elsewhere: list[str] = []
    try:
        context = browser.new_context()

        def route(r) -> None:
            url = urlparse(r.request.url)
            if url.scheme in ("data", "blob") or (url.hostname == "127.0.0.1" and url.port == port):
                r.continue_()
            else:
                elsewhere.append(r.request.url)
                r.abort()  # offline it would fail anyway; online it would tell a third party

        context.route("**/*", route)
        page = context.new_page()
        for path, heading in [("", "LLM Development Platform"), ("Models", "Models"), ("Datasets", "Data sets"),
                              ("Training", "Fine-tuning"), ("RLHF", "Alignment (RLHF)"), ("Evaluation", "Evaluation"),
                              ("Playground", "Playground"),
                              ("Jobs", "Jobs")]:
            page.goto(f"http://127.0.0.1:{port}/{path}")
            expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
            expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
        context.close()
    finally:
        stop_server(server)
    assert elsewhere == []
