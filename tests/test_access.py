"""Safe to share (core/access): accounts and sign-in, roles and owners, the audit
trail, allowed paths, outbound requests, masked secrets. Real database, real jobs,
real HTTP servers."""

from __future__ import annotations

import http.server
import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from conftest import add_account
from core.access import accounts, audit, masking, outbound, paths
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec
from storage.db import session
from storage.tables import SignInFailure, SignInSession, utcnow


def as_app(name: str) -> accounts.Actor:
    """The app visitor an account is, once signed in."""
    return accounts.actor_for(accounts.sign_in(name, "password-1234"))


def test_the_first_account_is_an_admin_and_passwords_are_hashed(home, backend):
    assert not accounts.sign_in_on()
    with pytest.raises(accounts.AccessError, match="the first account must be an admin"):
        add_account("alice", "member")
    with pytest.raises(accounts.AccessError, match="at least 8 characters"):
        accounts.add("root", "short", "admin", accounts.terminal())
    root = add_account("root", "admin")
    assert accounts.sign_in_on()
    assert root.password_hash.startswith("$argon2id$") and "password-1234" not in root.password_hash
    add_account("alice", "member")
    with pytest.raises(accounts.AccessError, match="already exists"):
        add_account("ALICE", "viewer")
    with pytest.raises(accounts.AccessError, match="last admin"):
        accounts.set_role("root", "member", accounts.terminal())
    with pytest.raises(accounts.AccessError, match="last admin"):
        accounts.set_disabled("root", True, accounts.terminal())
    with pytest.raises(accounts.AccessError, match="last admin"):
        accounts.remove("root", accounts.terminal())


@pytest.mark.fast
def test_sign_in_sessions_sign_out_and_disabled_accounts(home, monkeypatch):
    monkeypatch.setattr(accounts, "CACHE_S", 0.0)  # every check reads the database
    add_account("root", "admin")
    add_account("alice", "member")
    with pytest.raises(accounts.SignInRefused, match="Wrong name or password"):
        accounts.sign_in("alice", "not-her-password")
    with pytest.raises(accounts.SignInRefused, match="Wrong name or password"):
        accounts.sign_in("nobody", "password-1234")  # the same words: no way to find out who exists
    token = accounts.sign_in("Alice", "password-1234")
    who = accounts.actor_for(token)
    assert (who.name, who.role, who.in_app) == ("alice", "member", True)
    with session() as s:  # only the token's hash is stored
        assert s.query(SignInSession).filter_by(token_hash=token).count() == 0
    accounts.sign_out(token)
    assert accounts.actor_for(token) is None
    # an expired session is over
    token = accounts.sign_in("alice", "password-1234")
    with session() as s:
        s.execute(update(SignInSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert accounts.actor_for(token) is None
    # a disabled account cannot sign in, and its sessions end
    token = accounts.sign_in("alice", "password-1234")
    accounts.set_disabled("alice", True, accounts.terminal())
    assert accounts.actor_for(token) is None
    with pytest.raises(accounts.SignInRefused, match="disabled"):
        accounts.sign_in("alice", "password-1234")
    accounts.set_disabled("alice", False, accounts.terminal())
    accounts.reset_password("alice", "another-password", accounts.terminal())
    assert accounts.actor_for(accounts.sign_in("alice", "another-password")).name == "alice"
    actions = [(e.actor, e.action, e.ok) for e in reversed(audit.entries())]
    assert ("alice", "sign in", False) in actions and ("nobody", "sign in", False) in actions
    assert ("alice", "sign in", True) in actions and ("alice", "sign out", True) in actions


@pytest.mark.fast
def test_repeated_failures_are_slowed_down(home):
    add_account("root", "admin")
    for _ in range(accounts.FREE_FAILURES):
        with pytest.raises(accounts.SignInRefused, match="Wrong name or password"):
            accounts.sign_in("root", "guess")
    # the next try waits, even with the right password
    with pytest.raises(accounts.SignInRefused, match=r"Too many failed sign-ins as 'root': try again in \d+ s"):
        accounts.sign_in("root", "password-1234")
    assert accounts.wait_after(3) < accounts.wait_after(4) < accounts.wait_after(5) <= accounts.MAX_WAIT_S
    with session() as s:  # the wait is over
        s.execute(update(SignInFailure).values(last_at=utcnow() - timedelta(seconds=accounts.MAX_WAIT_S + 1)))
    assert accounts.actor_for(accounts.sign_in("root", "password-1234")).name == "root"
    with session() as s:  # a success clears the count
        assert s.query(SignInFailure).count() == 0


def test_owners_roles_and_the_audit_trail(home, backend):
    add_account("root", "admin")
    add_account("alice", "member")
    add_account("bob", "member")
    add_account("vera", "viewer")
    alice, bob, vera, root = as_app("alice"), as_app("bob"), as_app("vera"), as_app("root")
    job_id = jobs.submit(CreateModelSpec(name="alices", size="tiny"), by=alice, start=False)
    assert jobs.get(job_id).owner_id == alice.account_id
    row = models.find("alices")  # the model it will make: reserved at submit, alice's already
    assert row.owner_id == alice.account_id and models.model_dict(row)["owner"] == "alice"
    assert "alice's" in models.lineage(row)[0]
    # a viewer starts nothing; another member changes nothing of alice's
    with pytest.raises(accounts.Denied, match="needs the member role"):
        jobs.submit(CreateModelSpec(name="veras", size="tiny"), by=vera, start=False)
    with pytest.raises(accounts.Denied, match="belongs to alice: only its owner or an admin may delete it"):
        models.delete(row.id, by=bob)
    with pytest.raises(accounts.Denied, match="belongs to alice"):
        models.rename(row.id, "bobs-now", by=bob)
    with pytest.raises(accounts.Denied, match=f"job {job_id} belongs to alice"):
        jobs.cancel(job_id, by=bob)
    with pytest.raises(accounts.Denied, match="a viewer may not delete"):
        models.delete(row.id, by=vera)
    assert models.find("alices").name == "alices" and [j.id for j in jobs.list_jobs()] == [job_id]
    # an admin may: rename alice's model, stop her job (its unfinished model goes with it)
    models.rename(row.id, "renamed", by=root)
    assert jobs.cancel(job_id, by=root).startswith("cancelled") and models.list_models() == []
    # a failed namesake of alice's is hers to replace, not bob's
    failed = jobs.submit(CreateModelSpec(name="flaky", size="tiny"), by=alice, start=False)
    jobs.finish(failed, "failed", error_class="crashed", error="it broke")
    assert models.find("flaky").status == "error"
    with pytest.raises(ValueError, match="name: a failed model named 'flaky' belongs to alice"):
        jobs.submit(CreateModelSpec(name="flaky", size="tiny"), by=bob, start=False)
    again = jobs.submit(CreateModelSpec(name="flaky", size="tiny"), by=alice, start=False)
    assert models.find("flaky").owner_id == alice.account_id and models.find("flaky").job_id == again
    trail = [(e.actor, e.action, e.ok) for e in reversed(audit.entries())]
    assert ("alice", "submit", True) in trail
    assert ("vera", "submit", False) in trail and ("bob", "delete", False) in trail and ("bob", "rename", False) in trail
    assert ("bob", "cancel", False) in trail and ("root", "rename", True) in trail and ("root", "cancel", True) in trail
    assert trail[-1] == ("alice", "submit", True)
    assert {e.action for e in audit.entries(user="bob")} == {"sign in", "delete", "rename", "cancel"}


def test_cancel_is_for_the_owner_or_an_admin_and_members_have_limits(home, monkeypatch):
    monkeypatch.setenv("LLMDEV_MAX_QUEUED_PER_USER", "1")
    add_account("root", "admin")
    add_account("alice", "member")
    add_account("bob", "member")
    alice, bob = as_app("alice"), as_app("bob")
    first = jobs.submit(CreateModelSpec(name="one", size="tiny"), by=alice, start=False)
    with pytest.raises(accounts.Denied, match="you have 1 jobs waiting .*LLMDEV_MAX_QUEUED_PER_USER"):
        jobs.submit(CreateModelSpec(name="two", size="tiny"), by=alice, start=False)
    with pytest.raises(accounts.Denied, match="job .* belongs to alice"):
        jobs.cancel(first, by=bob)
    assert jobs.get(first).status == "queued"
    assert jobs.cancel(first, by=alice).startswith("cancelled")
    jobs.submit(CreateModelSpec(name="two", size="tiny"), by=alice, start=False)  # room again
    assert jobs.submit(CreateModelSpec(name="three", size="tiny"), start=False)  # the machine's owner has no limit


def test_the_first_admin_takes_over_what_came_before(home):
    job = jobs.submit(CreateModelSpec(name="early", size="tiny"), start=False)
    assert jobs.get(job).owner_id is None and models.find("early").owner_id is None
    root = add_account("root", "admin")
    assert jobs.get(job).owner_id == root.id and models.find("early").owner_id == root.id
    # from a terminal, with accounts, what is made belongs to the first admin
    later = jobs.submit(CreateModelSpec(name="later", size="tiny"), start=False)
    assert jobs.get(later).owner_id == root.id
    # an account deleted hands its objects on
    add_account("alice", "member")
    mine = jobs.submit(CreateModelSpec(name="mine", size="tiny"), by=as_app("alice"), start=False)
    assert accounts.remove("alice", accounts.terminal()) == "root"
    assert jobs.get(mine).owner_id == root.id and models.find("mine").owner_id == root.id


def test_rubrics_try_it_and_unconfined_user_code_follow_the_roles(home, tmp_path, monkeypatch):
    """A rubric is changed by whoever saved it or an admin; "Try it" is a member's, checked
    in core; user code that cannot be confined here does not run once sign-in is on."""
    from core.access import sandbox
    from core.evaluation import judge
    from core.training import grpo
    from core.training.grpo import GRPOSpec

    monkeypatch.setattr(sandbox, "_isolation", ["bubblewrap is not installed (this test says so)"])
    assert sandbox.command(tmp_path, ["-c", "pass"])[-2:] == ["-c", "pass"]  # no account: the laptop's single user
    add_account("root", "admin")
    add_account("alice", "member")
    add_account("bob", "member")
    add_account("vera", "viewer")
    alice, bob, vera, root = as_app("alice"), as_app("bob"), as_app("vera"), as_app("root")
    judge.save_rubric("strict", "Grade strictly: {answer}", 1, 5, by=alice)
    with pytest.raises(accounts.Denied, match="the rubric 'strict' belongs to alice"):
        judge.save_rubric("strict", "Everything is a 5: {answer}", 1, 5, by=bob)
    with pytest.raises(accounts.Denied, match="needs the member role"):
        judge.save_rubric("mine", "Grade: {answer}", 1, 5, by=vera)
    judge.save_rubric("strict", "Grade very strictly: {answer}", 1, 5, by=root)
    assert judge.get_rubric("strict").text == "Grade very strictly: {answer}"
    spec = GRPOSpec.model_construct(model="m", dataset="d", reward_file=str(tmp_path / "reward_file.py"))
    with pytest.raises(accounts.Denied, match="trying a reward file needs the member role"):
        grpo.try_in_subprocess(spec, by=vera)
    with pytest.raises(accounts.Denied, match="cannot confine user code"):
        grpo.try_in_subprocess(spec, by=alice)
    # wherever it would start (a worker, a Ray node), unconfined user code is refused, naming the way out
    with pytest.raises(sandbox.UserCodeError, match="sign-in is on.*install bubblewrap.*LLMDEV_USER_CODE_UNCONFINED=1"):
        sandbox.command(tmp_path, ["-c", "pass"])
    monkeypatch.setenv("LLMDEV_USER_CODE_UNCONFINED", "1")
    assert sandbox.command(tmp_path, ["-c", "pass"])[-2:] == ["-c", "pass"]
    trail = {(e.actor, e.action, e.ok) for e in audit.entries()}
    assert ("bob", "change", False) in trail and ("vera", "try reward file", False) in trail


# --- paths ---------------------------------------------------------------------------------


def test_app_paths_stay_under_the_allowed_roots(home, tmp_path, monkeypatch):
    from core.data.importer import ImportDatasetSpec
    from core.evaluation.lm_eval import EvalLmEvalSpec
    from core.models.importer import ImportModelSpec
    from core.spec import SpecError
    from core.training.grpo import GRPOSpec

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.jsonl").write_text('{"text": "hi"}\n')
    (outside / "reward.py").write_text("def reward(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    (outside / "corpus.txt").write_text("hello world\n")
    paths.serve_visitors()
    assert not paths.confined()  # single-user: the laptop's owner names any path
    ImportDatasetSpec(path=str(outside / "data.jsonl"), name="d")
    add_account("root", "admin")
    assert paths.confined()

    def refused(build, value):
        with pytest.raises(SpecError) as err:
            build(value)
        assert paths.refusal(value) in str(err.value)
        return str(err.value)

    for name in ("data.jsonl", "missing.jsonl"):  # one message, whether the file exists or not
        refused(lambda v: ImportDatasetSpec(path=v, name="d"), str(outside / name))
    refused(lambda v: ImportDatasetSpec(path=v, name="d"), "/etc/passwd")
    refused(lambda v: GRPOSpec(model="m", dataset="d", output_name="o", reward_file=v), str(outside / "reward.py"))
    refused(lambda v: EvalLmEvalSpec(model="m", tasks=["t"], task_dir=v), str(outside))
    refused(lambda v: ImportModelSpec(source=v, name="m"), str(outside))
    refused(lambda v: CreateModelSpec(name="m", corpus=v), str(outside / "corpus.txt"))
    # a Hub id is not looked up on disk; a relative folder is not a way around
    assert ImportModelSpec(source="owner/some-model", name="m").source == "owner/some-model"
    refused(lambda v: ImportModelSpec(source=v, name="m"), "./workspace")
    # uploads and the shipped samples are allowed; a symlink out of them is not
    upload = paths.uploads() / "mine.jsonl"
    upload.parent.mkdir(parents=True)
    upload.write_text('{"text": "hi"}\n')
    assert ImportDatasetSpec(path=str(upload), name="d").path == str(upload.resolve())
    assert ImportDatasetSpec(path=str(paths.ASSETS / "samples" / "text.jsonl"), name="d")
    (paths.uploads() / "escape.jsonl").symlink_to(outside / "data.jsonl")
    refused(lambda v: ImportDatasetSpec(path=v, name="d"), str(paths.uploads() / "escape.jsonl"))
    # an admin allows a folder: then it is usable
    with pytest.raises(accounts.Denied):
        paths.save_setting([str(outside)], as_app_member(home))
    paths.save_setting([str(outside)], accounts.terminal())
    assert ImportDatasetSpec(path=str(outside / "data.jsonl"), name="d").path == str(outside / "data.jsonl")
    monkeypatch.setenv(paths.ENV, str(tmp_path / "elsewhere"))  # the variable wins over the setting
    refused(lambda v: ImportDatasetSpec(path=v, name="d"), str(outside / "data.jsonl"))
    # the machine's owner (the CLI, a worker) is not held to them
    paths.serve_visitors(False)
    assert ImportDatasetSpec(path=str(outside / "data.jsonl"), name="d")


def as_app_member(home) -> accounts.Actor:
    add_account("mia", "member")
    return as_app("mia")


# --- outbound requests and secrets ------------------------------------------------------------


@pytest.mark.fast
def test_outbound_requests_refuse_metadata_and_link_local_addresses():
    for url in ("http://169.254.169.254/latest/meta-data", "http://[fe80::1]:8000/v1", "http://metadata.google.internal/x",
                "http://169.254.10.20:8265", "http://0.0.0.0:8000/v1", "file:///etc/passwd", "ftp://host/x",
                "http://[::ffff:169.254.169.254]/", "http://[::ffff:a9fe:a9fe]/", "http://[2002:a9fe:a9fe::1]/",
                "http://[64:ff9b::a9fe:a9fe]/"):  # the metadata address inside IPv6 forms that reach it
        with pytest.raises(outbound.Refused):
            outbound.check_url(url)
    for url in ("http://127.0.0.1:8000/v1", "http://localhost:8265", "https://10.1.2.3/v1", "http://[::1]:9/x"):
        assert outbound.check_url(url) == url


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list = []
    redirect_to = ""

    def do_POST(self):  # noqa: N802
        type(self).seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
        if self.redirect_to and self.path.startswith("/v1"):
            self.send_response(302)  # urllib follows it (as a GET)
            self.send_header("Location", self.redirect_to)
            self.end_headers()
            return
        body = ("x" * 5000 + "\n" + "y" * 5000).encode()  # a long, many-line error body
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


def _serve(handler) -> tuple[http.server.HTTPServer, str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def test_the_judge_keeps_its_key_from_other_hosts_and_remote_errors_short():
    from core.evaluation import judge

    class Target(_Recorder):
        seen = []

    class Redirector(_Recorder):
        seen = []

    target, target_url = _serve(Target)
    Redirector.redirect_to = target_url.replace("127.0.0.1", "localhost") + "/elsewhere"  # another host
    redirector, redirector_url = _serve(Redirector)
    try:
        with pytest.raises(judge.JudgeError) as err:
            judge.ask_endpoint(redirector_url + "/v1", "hi", api_key="sk-secret-key-123")
        assert Redirector.seen[0]["authorization"] == "Bearer sk-secret-key-123"
        assert Target.seen and all(s["authorization"] is None for s in Target.seen)  # not forwarded
        message = str(err.value)
        assert "\n" not in message and len(message) < 400 and "sk-secret" not in message
        with pytest.raises(judge.JudgeError, match="metadata"):
            judge.ask_endpoint("http://169.254.169.254/v1", "hi")
    finally:
        target.shutdown()
        redirector.shutdown()


@pytest.mark.fast
def test_secrets_are_masked_everywhere(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://llm:pa55word-xyz@db.example:5432/llm")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-0123456789")
    text = ("could not connect to postgresql+psycopg://llm:pa55word-xyz@db.example:5432/llm; the key sk-live-0123456789; "
            "host=db password=hunter2222 Authorization: Bearer abcdef123456")
    shown = masking.mask(text)
    for secret in ("pa55word-xyz", "sk-live-0123456789", "hunter2222", "abcdef123456"):
        assert secret not in shown
    assert "postgresql+psycopg://llm:***@db.example:5432/llm" in shown
    assert masking.one_line("a\nb\n" * 1000).count("\n") == 0


@pytest.mark.fast
def test_a_database_url_with_a_password_that_cannot_connect_is_never_shown(home, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    from storage import db

    monkeypatch.setenv("DATABASE_URL", "postgresql://llm:topsecret-pw@127.0.0.1:1/llm")
    db.dispose_engines()
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60).run()
    shown = " ".join(e.value for e in at.error)
    assert "Cannot open the database" in shown and "127.0.0.1:1" in shown
    assert "topsecret-pw" not in shown and "***" in shown
    st.cache_resource.clear()


# --- the CLI ------------------------------------------------------------------------------------


def test_users_and_audit_from_the_cli(cli, home):
    def run(*args, stdin=""):
        import subprocess
        import sys

        from conftest import ROOT

        return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, input=stdin, capture_output=True, text=True,
                              timeout=120)

    done = run("users", "add", "root", "--role", "admin", stdin="a-long-password\n")
    assert done.returncode == 0 and "sign-in is now on" in done.stdout, done.stderr
    assert "a-long-password" not in done.stdout + done.stderr
    assert run("users", "add", "alice", "--role", "member", stdin="").returncode == 2  # no password, nothing made
    assert run("users", "add", "alice", "--role", "member", stdin="short\n").returncode == 2
    assert run("users", "add", "alice", "--role", "member", stdin="alices-password\n").returncode == 0
    assert run("users", "set-role", "alice", "viewer").returncode == 0
    assert run("users", "disable", "alice").returncode == 0
    listed = json.loads(run("users", "list", "--json").stdout)
    assert [(u["name"], u["role"], u["disabled"]) for u in listed] == [("root", "admin", False), ("alice", "viewer", True)]
    assert "password" not in json.dumps(listed)
    assert run("users", "delete", "alice").returncode == 2  # asks for --yes
    assert run("users", "delete", "alice", "--yes").returncode == 0
    trail = json.loads(run("audit", "--json").stdout)
    assert [e["action"] for e in trail][:4] == ["delete account", "disable account", "set role", "add account"]
    assert all(e["user"].endswith("(terminal)") for e in trail)


@pytest.mark.fast
def test_which_addresses_are_this_machine_only():
    from core.network import loopback

    assert all(loopback(a) for a in ("127.0.0.1", "127.0.0.2", "localhost", " LOCALHOST ", "::1", "[::1]"))
    assert not any(loopback(a) for a in (None, "", "0.0.0.0", "::", "[::]", "10.0.0.1", "example.com"))
