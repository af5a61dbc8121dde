"""A shared app in a real browser (Chromium): two members and a viewer.

The anonymous visitor sees only the sign-in page; member A cannot delete member B's
model (no button, and the action is refused if forced); the viewer reads but cannot
start a job; a reload keeps the sign-in (the cookie), sign-out ends it (the old
cookie no longer opens /api/live); the audit trail lists each action with its user."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from conftest import add_account
from core.access import accounts, audit
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec
from test_browser import ARTIFACTS, CHROMIUM, browser, free_port, start_server, stop_server  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser]


def sign_in(page, base: str, name: str) -> None:
    from playwright.sync_api import expect

    page.goto(base + "/Models")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.locator(".st-key-sign_in_name input").fill(name)
    page.locator(".st-key-sign_in_password input").fill("password-1234")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("stSidebar").get_by_text(f"Signed in as {name}")).to_be_visible()


def sign_out(page) -> None:
    from playwright.sync_api import expect

    page.locator(".st-key-sign_out button").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def live_status(base: str, cookie: str) -> int:
    request = urllib.request.Request(base + "/api/live", headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_two_members_and_a_viewer_share_the_app(home, browser):  # noqa: F811
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    add_account("root", "admin")
    for name, role in (("alice", "member"), ("bob", "member"), ("vera", "viewer")):
        add_account(name, role)
    bob = accounts.actor_for(accounts.sign_in("bob", "password-1234"))
    assert jobs.wait(jobs.submit(CreateModelSpec(name="bobs-model", size="tiny"), by=bob), timeout_s=120).status == "succeeded"
    port = free_port()
    server = start_server(port)
    base = f"http://127.0.0.1:{port}"
    try:
        # anonymous: the sign-in page and nothing else, on every page; /api/live says 401
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        for path in ("/", "/Models", "/Jobs"):
            page.goto(base + path)
            expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            expect(page.get_by_test_id("stMetric")).to_have_count(0)
            expect(page.get_by_text("bobs-model")).to_have_count(0)
        assert live_status(base, "") == 401
        page.screenshot(path=str(ARTIFACTS / "sign-in.png"), full_page=True)

        # alice: bob's model has no delete button for her; she makes her own (she may delete it)
        sign_in(page, base, "alice")
        expect(page.get_by_text("belongs to bob: only its owner or an admin may rename or delete it")).to_be_visible()
        expect(page.get_by_role("button", name="Delete model")).to_have_count(0)
        page.get_by_role("tab", name="Create from scratch").click()
        page.locator(".st-key-create_name input").fill("alices-model")
        page.get_by_role("button", name="Create model").click()
        expect(page.get_by_text("Started job 2")).to_be_visible()
        assert jobs.wait(2, timeout_s=120).status == "succeeded"
        assert models.find("alices-model").owner_id == accounts.get("alice").id
        # a reload keeps her signed in (the session cookie); the live API answers her
        page.reload()
        expect(page.get_by_test_id("stSidebar").get_by_text("Signed in as alice")).to_be_visible()
        cookie = next(c for c in page.context.cookies() if c["name"] == "llmdev_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert live_status(base, f"llmdev_session={cookie['value']}") == 200
        page.get_by_role("tab", name="Your models").click()
        pick = page.locator(".st-key-model_pick input")
        pick.click()
        pick.fill("alices")  # the select box filters its options as one types
        page.keyboard.press("Enter")
        expect(page.get_by_role("button", name="Delete model")).to_be_visible()
        # forced: the same delete of bob's model as alice, refused
        with pytest.raises(accounts.Denied):
            models.delete(models.find("bobs-model").id, by=accounts.actor_for(cookie["value"]))
        sign_out(page)
        assert live_status(base, f"llmdev_session={cookie['value']}") == 401  # the old cookie is worth nothing now

        # vera (viewer): reads everything, starts nothing
        sign_in(page, base, "vera")
        expect(page.get_by_text("bobs-model").first).to_be_visible()
        page.get_by_role("tab", name="Create from scratch").click()
        expect(page.get_by_role("button", name="Create model")).to_be_disabled()
        page.get_by_test_id("stSidebar").get_by_role("link", name="Training", exact=True).click()
        expect(page.get_by_role("heading", name="Fine-tuning")).to_be_visible()
        expect(page.get_by_text("starting jobs needs the member role").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)
        sign_out(page)

        # root (admin): the audit trail, each action with its user
        sign_in(page, base, "root")
        page.get_by_test_id("stSidebar").get_by_role("link", name="Jobs", exact=True).click()
        trail = page.get_by_test_id("stExpander").filter(has_text="Audit trail: who did what")
        trail.get_by_text("Audit trail: who did what").click()
        table = trail.get_by_test_id("stDataFrame").locator("table")  # the grid is a canvas; its hidden twin a table
        expect(table).to_contain_text("alice")
        text = "\n".join(row.text_content() for row in table.locator("tr").all())
        for user, action in (("bob", "submit"), ("alice", "submit"), ("alice", "delete"), ("alice", "sign out"),
                             ("vera", "sign in"), ("root", "sign in")):
            assert any(user in line and action in line for line in text.splitlines()), (user, action, text)
        page.screenshot(path=str(ARTIFACTS / "audit.png"), full_page=True)
    finally:
        stop_server(server)
    trail = {(e.actor, e.action, e.ok) for e in audit.entries()}
    assert ("alice", "delete", False) in trail and ("vera", "sign in", True) in trail
    assert [m.name for m in models.list_models()] == ["bobs-model", "alices-model"]
