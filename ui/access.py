"""Sign-in for every page, and who is looking (core/access/accounts.py).

`gate()` runs in ui.common.setup_page before anything of a page is drawn: with
no account the app is single-user (and listens on loopback only: app.py); once
an account exists, a visitor without a valid session sees the sign-in form and
nothing else. A session is a token kept in this Streamlit session and in an
HttpOnly cookie (set by POST /api/session, read back from the websocket's first
request after a reload, and by GET /api/live), so a refresh does not sign out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

import streamlit as st
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.access import accounts, paths
from core.access.accounts import Actor
from core.network import loopback

COOKIE = "llmdev_session"
TOKEN_KEY = "_session_token"

_JS = """
export default function ({ data }) {
  // POST: keep the signed-in session in an HttpOnly cookie; DELETE: forget it
  fetch("/api/session", {
    method: data.token ? "POST" : "DELETE",
    headers: data.token ? { "X-LLMDev-Session": data.token } : {},
    credentials: "same-origin",
  }).catch(() => {});
}
"""
_cookie = st.components.v2.component("llmdev_session", js=_JS)


# --- who is looking ------------------------------------------------------------------------


def open_without_sign_in() -> Optional[str]:
    """Why this app must not serve as it is started (listening beyond loopback with
    no account to sign in with), or None."""
    address = st.get_option("server.address")
    if loopback(address):
        return None
    try:
        if accounts.sign_in_on():
            return None
    except Exception as exc:  # the database is away: sign-in cannot be checked either
        return f"the app would listen on {address or 'every interface'} but cannot read its accounts ({type(exc).__name__})"
    return (f"the app would listen on {address or 'every interface (no server.address)'} with no sign-in: anyone who "
            "reaches the port could use it. Make an admin account first (python -m core users add NAME --role admin), "
            "or listen on 127.0.0.1 (the default in .streamlit/config.toml)")


def actor() -> Actor:
    """Who this session acts as (checked anew: a session that ended or an account
    disabled since the page was drawn acts as nobody)."""
    if not accounts.sign_in_on():
        return accounts.SINGLE_USER
    found = accounts.actor_for(st.session_state.get(TOKEN_KEY))
    if found is None:
        raise accounts.Denied("you are signed out: sign in again")
    return found


def can_run() -> bool:
    """Whether this visitor may start jobs and services (a member or an admin)."""
    try:
        return actor().may("member")
    except accounts.Denied:
        return False


def refused(doing: str) -> bool:
    """True, with the reason on the page, when this visitor may not do what starts or
    uses compute (`doing`). For on_change/on_click callbacks: Streamlit discards a value
    sent for a widget this run draws disabled, but runs a callback when the previous run
    drew its widget enabled (a member made a viewer since, the page still open)."""
    if can_run():
        return False
    st.error(f"{doing} needs the member role.")
    return True


def can_admin() -> bool:
    """Whether this visitor may change settings (an admin, or the single user)."""
    try:
        return actor().may("admin")
    except accounts.Denied:
        return False


def may_change(owner_id: Optional[int]) -> bool:
    """Whether this visitor may change or delete an object with this owner."""
    try:
        return accounts.may_change(actor(), owner_id)
    except accounts.Denied:
        return False


def gate() -> None:
    """At the top of every page: sign-in when it is on. Stops the page for a visitor
    who is not signed in; shows who is signed in, and Sign out, in the sidebar."""
    paths.serve_visitors()  # paths named on these pages are held to the allowed roots
    why = open_without_sign_in()
    if why:
        st.error(f"This app refuses to serve: {why}.")
        st.stop()
    if not accounts.sign_in_on():
        return
    token = st.session_state.get(TOKEN_KEY) or st.context.cookies.get(COOKIE)
    who = accounts.actor_for(token)
    if who is None:
        st.session_state.pop(TOKEN_KEY, None)
        ended = bool(token) and st.session_state.get("_ended_token") != token  # said once, not at every rerun
        st.session_state["_ended_token"] = token
        sign_in_form(ended)
        st.stop()
    st.session_state[TOKEN_KEY] = token
    if st.session_state.pop("_keep_cookie", False):
        _cookie(key="llmdev_session_cookie", data={"token": token}, height=0)
    st.sidebar.markdown(f"Signed in as **{who.name}** ({who.role})")
    st.sidebar.button("Sign out", key="sign_out", on_click=_sign_out, icon=":material/logout:")
    if not who.may("member"):
        st.sidebar.caption("A viewer reads everything here; starting jobs needs the member role (ask an admin).")


def _sign_out() -> None:
    accounts.sign_out(st.session_state.pop(TOKEN_KEY, None))
    st.session_state["_forget_cookie"] = True
    if provider() and st.user.is_logged_in:
        st.logout()  # and out of the identity provider's session in this app, or it would sign in again at once


def provider() -> str:
    """The identity provider's name when sign-in through one (OpenID Connect, Streamlit's
    st.login) is configured in the secrets' [auth] section, else ""."""
    try:
        auth = st.secrets.get("auth")
    except Exception:  # no secrets file
        return ""
    if not auth:
        return ""
    named = [k for k, v in auth.items() if isinstance(v, Mapping)]  # [auth.google], [auth.microsoft], ...
    return named[0] if named else "your organisation"


def sign_in_form(ended: bool = False) -> None:
    """The only thing a visitor without a session sees (`ended`: the one this browser
    had is over: expired, signed out elsewhere, or its account disabled)."""
    st.title("Sign in")
    st.caption("LLM Development Platform: an account is made by an admin (python -m core users add NAME --role member).")
    if st.session_state.pop("_forget_cookie", False):
        _cookie(key="llmdev_session_forget", data={"token": ""}, height=0)
        st.info("Signed out.")
    elif ended:
        st.info("Your session has ended (it expired, was signed out elsewhere, or the account was disabled): sign in again.")
    if provider():
        _provider_sign_in()
    with st.form("sign_in"):
        name = st.text_input("Name", key="sign_in_name")
        password = st.text_input("Password", type="password", key="sign_in_password")
        if st.form_submit_button("Sign in", type="primary"):
            try:
                token = accounts.sign_in(name, password)
            except accounts.SignInRefused as exc:
                st.error(str(exc))
                return
            st.session_state[TOKEN_KEY] = token
            st.session_state["_keep_cookie"] = True
            st.rerun()


# --- HTTP: the session cookie ------------------------------------------------------------------


def request_actor(request: Request) -> Optional[Actor]:
    """The signed-in visitor of an HTTP request to the app's own routes (its cookie)."""
    return accounts.actor_for(request.cookies.get(COOKIE))


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is None or origin.split("://", 1)[-1] == request.headers.get("host", "")


def _session(request: Request) -> Response:
    """POST (X-LLMDev-Session: a valid token): the HttpOnly cookie that keeps a sign-in
    across reloads; DELETE: the cookie cleared."""
    if not _same_origin(request):
        return JSONResponse({"error": "cross-site request refused"}, status_code=403)
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    if request.method == "DELETE":
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response
    token = request.headers.get("x-llmdev-session", "")
    if accounts.actor_for(token) is None:
        return JSONResponse({"error": "not a valid session"}, status_code=401)
    response.set_cookie(COOKIE, token, max_age=int(accounts.session_hours() * 3600), path="/", httponly=True,
                        samesite="strict", secure=_over_https(request))
    return response


def _over_https(request: Request) -> bool:
    """Whether the browser talks https: here, or to a proxy that ends TLS and says so
    (X-Forwarded-Proto). Trusting the header can only add the cookie's Secure flag."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


ROUTES = [Route("/api/session", _session, methods=["POST", "DELETE"])]


def _provider_sign_in() -> None:
    """Through the identity provider (st.login): its vouched-for e-mail is the account's name."""
    name = provider()
    if not st.user.is_logged_in:
        st.button(f"Sign in with {name}", key="sign_in_provider", type="primary",
                  on_click=st.login, args=(None if name == "your organisation" else name,))
        st.caption("Or with a name and password:")
        return
    email = st.user.get("email") or ""
    verified = str(st.user.get("email_verified", "")).lower() == "true"
    if not verified and os.environ.get("LLMDEV_OIDC_TRUST_EMAIL", "").strip() != "1":
        # a provider that lets its users type any e-mail would let them name any account here
        st.error(f"{name} does not say that the e-mail {email!r} is verified (email_verified), so it names no account "
                 "here. An admin whose provider only gives out its own addresses may set LLMDEV_OIDC_TRUST_EMAIL=1.")
        st.button(f"Sign out of {name}", key="sign_out_provider", on_click=st.logout)
        return
    try:
        token = accounts.sign_in_external(email, f"sign-in through {name}")
    except accounts.SignInRefused as exc:
        st.error(str(exc))
        st.button(f"Sign out of {name}", key="sign_out_provider", on_click=st.logout)
        return
    st.session_state[TOKEN_KEY] = token
    st.session_state["_keep_cookie"] = True
    st.rerun()
