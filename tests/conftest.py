"""Shared fixtures: a fresh data home per test, on SQLite and on PostgreSQL.

The PostgreSQL half needs LLMDEV_TEST_PG_URL (scripts/test.sh starts a server
and sets it). Outside CI the PostgreSQL cases are skipped without it; in CI
(CI=true) a missing server is an error, not a skip.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# No hub, no telemetry, one thread per process (workers and pytest share 2 cores).
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
    OMP_NUM_THREADS="1",
    LLMDEV_AUTO_STARTER="0",
)
os.environ.pop("DATABASE_URL", None)

PG_URL = os.environ.get("LLMDEV_TEST_PG_URL", "")


def _reset_pg(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    """Run a test on both database backends."""
    if request.param == "postgresql" and not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("LLMDEV_TEST_PG_URL is not set: run the suite with scripts/test.sh")
        pytest.skip("no PostgreSQL server (run scripts/test.sh)")
    return request.param


@pytest.fixture
def home(tmp_path, monkeypatch, request):
    """A fresh data home (and database) for one test; SQLite unless the test
    also asks for `backend`."""
    from storage import db

    backend = request.getfixturevalue("backend") if "backend" in request.fixturenames else "sqlite"
    data = tmp_path / "home"
    monkeypatch.setenv("LLMDEV_HOME", str(data))
    if backend == "postgresql":
        _reset_pg(PG_URL)
        monkeypatch.setenv("DATABASE_URL", PG_URL)
    else:
        monkeypatch.delenv("DATABASE_URL", raising=False)
    db.dispose_engines()
    yield data
    _stop_workers(data)
    db.dispose_engines()


@pytest.fixture(autouse=True)
def _not_serving_visitors():
    """A page test holds paths to the app's rules in this process (core/access/paths.py
    serve_visitors): every test starts and ends as the machine's owner."""
    from core.access import paths

    paths.serve_visitors(False)
    yield
    paths.serve_visitors(False)


FAST_FORBIDS = {"browser": "a browser", "ray": "a Ray cluster", "postgresql": "PostgreSQL"}
"""What a test of the fast tier (pytest -m fast) may not need, by marker."""


def pytest_collection_modifyitems(items):
    """The PostgreSQL half of a backend test is marked postgresql. The fast tier
    holds only what runs in seconds with no server: a test marked fast that is
    also a browser, Ray or PostgreSQL test is a mistake in its marks."""
    for item in items:
        if getattr(item, "callspec", None) and item.callspec.params.get("backend") == "postgresql":
            item.add_marker("postgresql")
        if not item.get_closest_marker("fast"):
            continue
        needs = [what for marker, what in FAST_FORBIDS.items() if item.get_closest_marker(marker)]
        if needs:
            raise pytest.UsageError(f"{item.nodeid} is marked fast but needs {' and '.join(needs)}")


@pytest.fixture(autouse=True)
def _fast_starts_no_job(request, monkeypatch):
    """A test of the fast tier fails if it starts a job process (that takes seconds
    of CPU and belongs in the whole suite)."""
    if request.node.get_closest_marker("fast"):
        from core.jobs import lifecycle

        def refuse(job_id: int):
            pytest.fail(f"a test marked fast started job {job_id} in a process: take its fast mark off")

        monkeypatch.setattr(lifecycle, "worker_command", refuse)


def add_account(name: str, role: str, password: str = "password-1234"):
    """An account made as the CLI makes it (the first one must be an admin)."""
    from core.access import accounts

    return accounts.add(name, password, role, accounts.terminal())


@pytest.fixture(scope="session")
def _templates(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("templates")


@pytest.fixture
def prepared(home, _templates):
    """`prepared(key, build)`: fill this test's fresh home with what `build()` makes
    (models, data sets: real jobs), running `build` only for the first test that asks
    for `key`: later ones get a copy of that home, database included, as it was when
    `build` ended. Every test still starts from its own home; most of a fixture's
    cost is the job processes' start-up, paid once per key instead of once per test.
    On PostgreSQL (the database is not in the home) `build` runs every time."""
    import shutil

    from storage import db

    def prepare(key: str, build) -> None:
        template = _templates / key
        if os.environ.get("DATABASE_URL"):
            build()
        elif template.exists():
            db.dispose_engines()
            shutil.copytree(template, home, symlinks=True, dirs_exist_ok=True)
        else:
            build()
            wait_for(lambda: not _worker_pids(home), 30, what="the workers to exit")
            db.dispose_engines()  # SQLite's write-ahead log folded into the database file
            shutil.copytree(home, template, symlinks=True)

    return prepare


def tiny_model(prepared, name: str):
    """The registry row of a tiny llama called `name`, made by a real job once per
    test session (`prepared`) and copied into each test's home after that."""
    from core.jobs import lifecycle as jobs
    from core.models import registry as models
    from core.models.create import CreateModelSpec

    def build():
        job = jobs.wait(jobs.submit(CreateModelSpec(name=name, arch="llama", size="tiny")), timeout_s=120)
        assert job.status == "succeeded", job.log_tail

    prepared(f"tiny-llama-{name}", build)
    return models.find(name)


@pytest.fixture
def tiny_llama(home, prepared):
    """A tiny llama named "tiny" (the model most page and browser tests start from)."""
    return tiny_model(prepared, "tiny")


def _worker_pids(home: Path) -> list[int]:
    """Worker processes (supervisors and job processes) of this data home."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "core.worker" in (proc.info["cmdline"] or []) and proc.environ().get("LLMDEV_HOME") == str(home):
                pids.append(proc.pid)
        except psutil.Error:
            pass
    return pids


def _stop_workers(home: Path) -> None:
    """Kill every worker a test left behind, even one that is only finishing up:
    with PostgreSQL the next test reuses job ids, and a late write would land there."""
    from core.jobs import lifecycle as jobs

    for pid in _worker_pids(home):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    for proc in list(jobs._children):
        proc.wait(10)
    jobs._children.clear()
    wait_for(lambda: not _worker_pids(home), 10, what="the workers to exit")


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    """Poll until predicate() is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def skewed(offset: str) -> list[str]:
    """A command prefix that runs a process with its clock `offset` off ("-3m"), as
    on a machine whose clock is wrong (libfaketime; its monotonic clock moves by
    as much: with FAKETIME_DONT_FAKE_MONOTONIC a sleep fails with EINVAL)."""
    import shutil
    import subprocess

    if shutil.which("faketime") is None:
        if os.environ.get("CI"):
            pytest.fail("faketime is not installed: run the suite with scripts/test.sh")
        pytest.skip("libfaketime's faketime is not installed (scripts/test.sh installs it)")
    prefix = ["faketime", "-f", offset]
    before = time.time()
    seen = float(subprocess.run([*prefix, sys.executable, "-c", "import time; print(time.time())"],
                                capture_output=True, text=True, check=True).stdout)
    after = time.time()
    # the process read a time outside the span it ran in, on the side the offset names
    assert (seen > after) if offset.startswith("+") else (seen < before), f"faketime {offset} did not move the clock"
    return prefix


@pytest.fixture
def cli(home):
    """Run `python -m core ...` in a subprocess against the test's data home."""
    import subprocess

    def run(*args: str, timeout: float = 180, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "core", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )

    return run
