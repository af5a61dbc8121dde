"""Sign-in on the pages (AppTest), and the app's server: closed by default, /api/live
and the session cookie over real HTTP."""

from __future__ import annotations

import http.cookies
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import timedelta

import psutil
import pytest
import streamlit as st
from sqlalchemy import update
from streamlit.testing.v1 import AppTest

from conftest import ROOT, add_account, wait_for
from core.access import accounts, audit
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec
from storage.db import session
from storage.tables import SignInSession, utcnow
from ui import playground


@pytest.fixture
def app(home):
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60)
    yield at
    st.cache_resource.clear()


def sign_in(at: AppTest, name: str, password: str = "password-1234") -> AppTest:
    at.text_input(key="sign_in_name").input(name)
    at.text_input(key="sign_in_password").input(password)
    return at.button[[b.label for b in at.button].index("Sign in")].click().run()


def test_without_a_session_only_the_sign_in_form_shows(app, monkeypatch):
    add_account("root", "admin")
    add_account("alice", "member")
    app.run()
    assert [t.value for t in app.title] == ["Sign in"]
    assert not app.metric and not app.sidebar.button  # nothing of the dashboard, no page controls
    for page in ("pages/1_Models.py", "pages/9_Jobs.py"):
        app.switch_page(page).run()
        assert [t.value for t in app.title] == ["Sign in"]
    sign_in(app, "alice", "wrong-password")
    assert [e.value for e in app.error] == ["Wrong name or password."]
    sign_in(app, "alice")
    assert [t.value for t in app.title] == ["Jobs"]
    assert any("Signed in as **alice** (member)" in m.value for m in app.sidebar.markdown)
    app.sidebar.button(key="sign_out").click().run()
    assert [t.value for t in app.title] == ["Sign in"] and [i.value for i in app.info] == ["Signed out."]
    trail = [(e.actor, e.action, e.ok) for e in reversed(audit.entries())]
    assert trail[-3:] == [("alice", "sign in", False), ("alice", "sign in", True), ("alice", "sign out", True)]
    # a session that expires while the page is open: the next rerun asks to sign in again, saying why
    sign_in(app, "alice")
    assert any("Signed in as **alice**" in m.value for m in app.sidebar.markdown)
    with session() as s:
        s.execute(update(SignInSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    monkeypatch.setattr(accounts, "CACHE_S", 0.0)
    app.run()
    assert [t.value for t in app.title] == ["Sign in"] and "Your session has ended" in app.info[0].value


def test_a_viewer_reads_but_starts_nothing_and_members_keep_to_their_own(app, monkeypatch):
    add_account("root", "admin")
    add_account("alice", "member")
    add_account("bob", "member")
    add_account("vera", "viewer")
    bob = accounts.actor_for(accounts.sign_in("bob", "password-1234"))
    assert jobs.wait(jobs.submit(CreateModelSpec(name="bobs", size="tiny"), by=bob), timeout_s=120).status == "succeeded"
    app.run()
    sign_in(app, "vera")
    app.switch_page("pages/1_Models.py").run()
    assert app.dataframe[0].value["owner"].tolist() == ["bob"]
    assert next(b for b in app.button if b.label == "Create model").disabled
    assert app.button(key="add_starter").disabled
    app.switch_page("pages/3_Training.py").run()
    assert not [e.value for e in app.exception]
    assert any("starting jobs needs the member role" in c.value for c in app.sidebar.caption)
    # a chat the page would not send (its input is disabled for a viewer): Streamlit discards it, nothing generated
    app.switch_page("pages/6_Playground.py").run()
    forged = app.chat_input(key="chat_prompt")
    assert forged.disabled
    forged.proto.disabled = False  # what a client that ignores `disabled` sends (AppTest refuses it otherwise)
    forged.set_value("Hello").run()
    assert not app.chat_message and not app.session_state["chat_history"]
    app.sidebar.button(key="sign_out").click().run()
    sign_in(app, "alice")
    app.switch_page("pages/1_Models.py").run()
    assert not [b for b in app.button if b.label.startswith("Delete")]  # bob's model: no delete for alice
    assert any("belongs to bob: only its owner or an admin may rename or delete it" in c.value for c in app.caption)
    assert not next(b for b in app.button if b.label == "Create model").disabled
    # forced anyway (a request the page would not send): refused, nothing changed
    alice = accounts.actor_for(app.session_state["_session_token"])
    with pytest.raises(accounts.Denied):
        models.delete(models.find("bobs").id, by=alice)
    assert models.find("bobs").status == "available"
    # made a viewer while her Playground is open: the budget she changes next (drawn enabled) is refused
    app.switch_page("pages/6_Playground.py").run()
    before = playground.model_cache().budget  # the app's cache (this process's)
    accounts.set_role("alice", "viewer", accounts.terminal())
    monkeypatch.setattr(accounts, "CACHE_S", 0.0)
    app.number_input(key="pg_budget").set_value(app.number_input(key="pg_budget").value + 1).run()
    assert "Changing the memory budget needs the member role." in [e.value for e in app.error]
    assert playground.model_cache().budget == before


@pytest.mark.fast
def test_a_path_outside_the_allowed_folders_is_refused_on_the_datasets_page(app, tmp_path):
    add_account("root", "admin")
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"text": "not for visitors"}\n')
    app.run()
    sign_in(app, "root")
    app.switch_page("pages/2_Datasets.py").run()
    app.radio(key="data_source").set_value("Path on this machine").run()
    shown = {}
    for path in (secret, tmp_path / "missing.jsonl"):
        app.text_input(key="data_path").input(str(path)).run()
        shown[path.name] = [e.value for e in app.error]
        assert not app.dataframe  # no preview
    assert shown["secret.jsonl"] != [] and [m.replace("secret", "missing") for m in shown["secret.jsonl"]] == shown["missing.jsonl"]
    assert "not found among the files this app may read" in shown["secret.jsonl"][0]


# --- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def streamlit(port: int, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.fileWatcherType", "none",
         *flags], cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def get(url: str, cookie: str = "", method: str = "GET", headers: dict | None = None):
    request = urllib.request.Request(url, method=method, headers={**({"Cookie": cookie} if cookie else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_the_app_listens_on_loopback_and_refuses_more_without_sign_in(home):
    port = free_port()
    refused = streamlit(port, "--server.address", "0.0.0.0")
    out, _ = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "not starting" in out and "python -m core users add" in out
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    server = streamlit(port)  # the defaults: .streamlit/config.toml
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/_stcore/health")[0] == 200 if _listening(port) else False, 60)
        bound = {c.laddr.ip for c in psutil.Process(server.pid).net_connections() if c.status == "LISTEN"}
        assert bound == {"127.0.0.1"}
    finally:
        server.kill()
        server.communicate(timeout=30)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_api_live_and_the_session_cookie_need_a_session(home):
    port = free_port()
    server = streamlit(port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _listening(port) and get(base + "/_stcore/health")[0] == 200, 60)
        assert get(base + "/api/live")[0] == 200  # no account: the single-user laptop
        add_account("root", "admin")
        status, _, body = get(base + "/api/live")
        assert status == 401 and b"sign in" in body
        token = accounts.sign_in("root", "password-1234")
        status, headers, _ = get(base + "/api/session", method="POST", headers={"X-LLMDev-Session": token})
        assert status == 204
        cookie = http.cookies.SimpleCookie(headers["Set-Cookie"])["llmdev_session"]
        assert cookie.value == token and cookie["httponly"] and cookie["samesite"].lower() == "strict"
        assert get(base + "/api/live", cookie=f"llmdev_session={token}")[0] == 200
        assert get(base + "/api/live?job=1", cookie=f"llmdev_session={token}")[0] == 404
        # not a session, another site, or a session that ended
        assert get(base + "/api/session", method="POST", headers={"X-LLMDev-Session": "made-up"})[0] == 401
        assert get(base + "/api/session", method="POST",
                   headers={"X-LLMDev-Session": token, "Origin": "http://evil.example"})[0] == 403
        accounts.sign_out(token)
        wait_for(lambda: get(base + "/api/live", cookie=f"llmdev_session={token}")[0] == 401, 15)  # the server's check cache
    finally:
        server.kill()
        server.communicate(timeout=30)


def test_sign_in_through_an_identity_provider_maps_to_an_account(app):
    """st.login (OpenID Connect) configured in the secrets: the e-mail the provider vouches
    for is the account's name; no such account, or a disabled one, signs in nobody."""
    add_account("root", "admin")
    accounts.add("alice@lab.org", None, "member", accounts.terminal())  # --no-password
    with pytest.raises(accounts.SignInRefused, match="Wrong name or password"):
        accounts.sign_in("alice@lab.org", "")  # only through the provider
    app.secrets["auth"] = {"redirect_uri": "http://127.0.0.1:8501/oauth2callback", "cookie_secret": "a-secret-value",
                           "google": {"client_id": "id", "client_secret": "secret",
                                      "server_metadata_url": "https://accounts.google.com/.well-known/openid-configuration"}}
    app.user = {"is_logged_in": False}
    app.run()
    assert app.button(key="sign_in_provider").label == "Sign in with google"
    app.user = {"is_logged_in": True, "email": "mallory@elsewhere.org", "email_verified": True}
    app.run()
    assert [t.value for t in app.title] == ["Sign in"] and "no account of that name" in app.error[0].value
    app.user = {"is_logged_in": True, "email": "alice@lab.org"}  # a provider that does not vouch for the address
    app.run()
    assert [t.value for t in app.title] == ["Sign in"] and "is verified" in app.error[0].value
    app.user = {"is_logged_in": True, "email": "Alice@lab.org", "email_verified": True}
    app.run()
    assert any("Signed in as **alice@lab.org** (member)" in m.value for m in app.sidebar.markdown)
    assert ("alice@lab.org", "sign in", True) in {(e.actor, e.action, e.ok) for e in audit.entries()}
