"""Storage on SQLite and PostgreSQL: migrations, typed rows, concurrent access."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import create_engine, func, inspect, select, text

from conftest import ROOT
from storage import db
from storage.tables import Event, Job, Metric, Model, utcnow

TABLES = {"models", "datasets", "jobs", "metrics", "events", "settings", "eval_samples", "rubrics", "exports", "accounts",
          "sign_in_sessions", "sign_in_failures", "audit", "alembic_version"}


def test_migrations_create_schema_at_head(home, backend):
    engine = db.get_engine()
    assert TABLES <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0006"
    # a second process start is a no-op
    db.dispose_engines()
    db.migrate(db.get_engine())


@pytest.mark.fast
def test_sqlite_uses_wal_and_busy_timeout(home):
    with db.get_engine().connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == db.SQLITE_BUSY_TIMEOUT_MS
    assert (home / "platform.db").is_file()


def test_rows_round_trip_with_utc_times_and_json(home, backend):
    with db.session() as s:
        m = Model(name="m", source="scratch", status="available", details={"a": [1, 2]})
        s.add(m)
        s.flush()
        job = Job(kind="create_model", title="t", spec={"k": 1}, model_ids=[m.id], progress_step=0, progress_message="", result={})
        s.add(job)
        s.flush()
        s.add_all([Metric(job_id=job.id, step=i, name="loss", value=1.0 / (i + 1)) for i in range(5)])
        s.add(Event(message="hello", job_id=job.id))
    with db.session() as s:
        job = s.scalars(select(Job)).one()
        assert job.created_at.tzinfo is not None and job.created_at.utcoffset().total_seconds() == 0
        assert abs((utcnow() - job.created_at).total_seconds()) < 60
        assert job.model_ids == [s.scalars(select(Model.id)).one()]
        assert s.scalars(select(Model.details)).one() == {"a": [1, 2]}
        assert [round(v, 3) for v in s.scalars(select(Metric.value).order_by(Metric.step))] == [1.0, 0.5, 0.333, 0.25, 0.2]


@pytest.mark.fast
def test_postgres_style_urls_get_a_driver(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db.example:5432/x")
    assert db.database_url() == "postgresql+psycopg://u:p@db.example:5432/x"


def test_writer_and_reader_processes_never_see_locked(home, backend):
    """A worker-like writer and a UI-like reader hammer the same database."""
    db.get_engine()  # migrate first
    script = textwrap.dedent(
        """
        import sys, time
        from sqlalchemy import func, select, update
        from storage.db import session
        from storage.tables import Job, Metric, utcnow
        role, job_id = sys.argv[1], int(sys.argv[2])
        n = 0
        while n < 300:
            with session() as s:
                if role == "writer":
                    s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow(), progress_step=n))
                    s.add(Metric(job_id=job_id, step=n, name="loss", value=1.0))
                else:
                    s.scalar(select(func.count()).select_from(Metric))
                    s.get(Job, job_id)
            n += 1
        print(n)
        """
    )
    with db.session() as s:
        job = Job(kind="create_model", title="t", spec={}, model_ids=[], progress_step=0, progress_message="", result={})
        s.add(job)
        s.flush()
        job_id = job.id
    procs = [
        subprocess.Popen([sys.executable, "-c", script, role, str(job_id)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for role in ("writer", "writer", "reader", "reader")
    ]
    results = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert "locked" not in err
        assert int(out.strip()) == 300
    with db.session() as s:
        assert s.get(Job, job_id).progress_step == 299
        assert s.scalar(select(func.count()).select_from(Metric)) == 2 * 300  # every write landed


def test_ids_are_never_reused(home, backend):
    with db.session() as s:
        s.add(Model(name="a", source="scratch", status="available", details={}))
    with db.session() as s:
        first = s.scalars(select(Model)).one()
        first_id = first.id
        s.delete(first)
    with db.session() as s:
        s.add(Model(name="b", source="scratch", status="available", details={}))
    with db.session() as s:
        assert s.scalars(select(Model.id)).one() > first_id


def test_an_existing_database_upgrades_to_accounts_and_its_first_admin_owns_everything(home, backend):
    """Today's schema (0005) with models, data sets, jobs, metrics and events, upgraded:
    nothing lost, and every object belongs to the first admin once one is made."""
    from alembic import command
    from alembic.config import Config

    from conftest import add_account

    url = db.database_url()
    engine = create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
        now = "2026-12-01 10:00:00"
        conn.execute(text("INSERT INTO models (name, source, status, details, created_at) VALUES "
                          f"('m1', 'scratch', 'available', '{{}}', '{now}'), ('m2', 'trained', 'available', '{{}}', '{now}')"))
        conn.execute(text("INSERT INTO datasets (name, format, status, details, created_at) VALUES "
                          f"('d1', 'text', 'available', '{{}}', '{now}')"))
        for i in (1, 2, 3):
            conn.execute(text("INSERT INTO jobs (kind, status, title, spec, model_ids, dataset_ids, progress_step, "
                              "progress_message, result, runner, created_at) VALUES "
                              f"('sft', 'succeeded', 'job {i}', '{{}}', '[1]', '[1]', 5, 'done', '{{}}', 'local', '{now}')"))
        for step in range(1, 51):
            conn.execute(text(f"INSERT INTO metrics (job_id, step, name, value, created_at) VALUES (1, {step}, 'loss', {1 / step}, '{now}')"))
        conn.execute(text(f"INSERT INTO events (message, created_at) VALUES ('before the upgrade', '{now}')"))
    tables = ("models", "datasets", "jobs", "metrics", "events")
    with engine.connect() as conn:
        before = {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in tables}
    engine.dispose()
    assert before == {"models": 2, "datasets": 1, "jobs": 3, "metrics": 50, "events": 1}

    upgraded = db.get_engine()  # what the app does on its first start after the update
    with upgraded.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0006"
        assert {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in tables} == before
        assert conn.execute(text("SELECT SUM(value) FROM metrics")).scalar() == pytest.approx(sum(1 / s for s in range(1, 51)))
    root = add_account("root", "admin")
    with upgraded.connect() as conn:
        for table in ("models", "datasets", "jobs"):
            owners = conn.execute(text(f"SELECT DISTINCT owner_id FROM {table}")).scalars().all()
            assert owners == [root.id], table
        assert {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in tables} == before
