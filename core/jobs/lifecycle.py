"""The job lifecycle: submit, queue, launch, watch, cancel, detect lost workers.

    queued -> running -> succeeded | failed | cancelled | paused | stopped

(paused: a training run stopped with a checkpoint, to be resumed; stopped: a
service, which runs until asked to stop, that was asked)

`submit(spec)` checks the spec's inputs, reserves its outputs, writes the row and
runs/<id>/spec.json, and starts a worker (`python -m core.worker <id>`) if its
lane has room: heavy jobs (training, evaluations) max_concurrent_jobs at a time,
light ones (imports, tiny models, short evaluations) their own slot beside them,
a service (runs until stopped) none. A
finishing worker starts the next queued job, so the queue drains with no daemon
and no browser. Whoever looks (`refresh()`: the UI, the CLI, a worker) marks a
running job whose worker is gone (core/jobs/liveness.py) as failed/lost and
escalates overdue cancels.
Every state change is a conditional UPDATE on the current status, so two
processes racing to finish the same job cannot both win.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import func, select, update

from core import config
from core.access import accounts, audit
from core.access.accounts import Actor
from core.data import registry as datasets
from core.export import registry as exports
from core.jobs.liveness import worker_alive
from core.models import registry as models
from storage.db import clock, clock_now, data_home, database_url, db_now, session, write_lock
from storage.tables import Event, Job, Metric

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled", "paused", "stopped")
STOPPED = ("cancelled", "paused", "stopped")
"""Ended because someone asked: not an error."""
ERROR_CLASSES = ("bad_input", "out_of_memory", "crashed", "lost")
REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL_LINES = 40
HOST = socket.gethostname()

# Worker processes this process started; polled so they do not linger as zombies.
_children: list[subprocess.Popen] = []


def run_dir(job_id: int) -> Path:
    return data_home() / "runs" / str(job_id)


def log_path(job_id: int) -> Path:
    return run_dir(job_id) / "log.txt"


def submit(spec: Any, *, start: bool = True, by: Optional[Actor] = None) -> int:
    """Queue a validated spec for `by` (default: the machine's owner at a terminal);
    returns the job id. Writes nothing if anything fails."""
    by = by or accounts.terminal()
    config.check()  # a bad setting is reported before a job is written
    try:
        accounts.require(by, "member", "starting a job")
        _check_limits(spec, by)
        check_user_code(spec, by)
    except accounts.Denied as exc:
        audit.record(by, "submit", spec.title(), str(exc), ok=False)
        raise
    spec.check_inputs()  # files it reads are checked before anything is written
    if spec.runner == "ray":
        from core.jobs import ray_runner

        ray_runner.check(spec)  # the cluster can run it: resources, database, data home
    folder: Optional[Path] = None
    owner = accounts.owner_for(by)
    try:
        with session() as s:
            write_lock(s)  # two submits of the same name: one wins, one is told
            s.info.update(actor=by, owner_id=owner)  # what the registries' new rows and name checks need
            model_ids = models.reserve_outputs(s, spec) + models.resolve_inputs(s, spec)
            dataset_ids = datasets.reserve_outputs(s, spec) + datasets.resolve_inputs(s, spec)
            export_ids = exports.reserve_outputs(s, spec)
            job = Job(
                owner_id=owner,
                kind=spec.kind,
                title=spec.title(),
                spec=spec.to_dict(),
                model_ids=model_ids,
                dataset_ids=dataset_ids,
                resumed_from=(spec.resume_from_job or None) if spec.trains else None,
                runner=spec.runner,
                status="queued",
                progress_step=0,
                progress_message="queued",
                result={},
            )
            s.add(job)
            s.flush()
            models.link_job(s, model_ids, job.id)
            exports.link_job(s, export_ids, job.id, model_ids)
            s.add(Event(message=f"Queued job {job.id}: {job.title}", job_id=job.id))
            folder = run_dir(job.id)
            if folder.exists():  # left over from a database that was reset
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            (folder / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
            (folder / "spec.json").chmod(0o600)  # it may hold an API key
            job_id = job.id
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    audit.record(by, "submit", f"job {job_id}", spec.title())
    if start:
        start_queued()
    return job_id


def _check_limits(spec: Any, by: Actor) -> None:
    """A member's queued jobs and running services, each up to its limit
    (LLMDEV_MAX_QUEUED_PER_USER, LLMDEV_MAX_SERVICES_PER_USER); admins and the
    machine's owner have none."""
    if by.account_id is None or by.role == "admin":
        return
    with session() as s:
        mine = list(s.scalars(select(Job).where(Job.owner_id == by.account_id, Job.status.in_(ACTIVE))))
    if spec.service:
        services = sum(1 for job in mine if lane(job) == "service")
        if services >= config.max_services_per_user():
            raise accounts.Denied(f"you have {services} services running (at most {config.max_services_per_user()} each: "
                                  "LLMDEV_MAX_SERVICES_PER_USER): stop one first")
        return
    queued = sum(1 for job in mine if job.status == "queued")
    if queued >= config.max_queued_per_user():
        raise accounts.Denied(f"you have {queued} jobs waiting (at most {config.max_queued_per_user()} each: "
                              "LLMDEV_MAX_QUEUED_PER_USER): wait for them to start, or cancel one")


def check_user_code(spec: Any, by: Actor) -> None:
    """In a shared app (sign-in on), code a visitor names runs only where it can be
    confined (core/access/sandbox.py)."""
    if not by.in_app or by.account_id is None or not any(getattr(spec, f, None) for f in spec.user_code):
        return
    from core.access import sandbox

    why = sandbox.refusal()
    if why is not None:
        raise accounts.Denied(why)


_lanes: dict[tuple, str] = {}
"""Lanes already worked out, by (database, job id, creation time): a job's spec never changes."""


def lane(job: Job) -> str:
    """Which line a job waits in: "service" (runs until stopped: no slot),
    "light" (an import, a tiny model, a short evaluation: its own slots beside
    the heavy ones) or "heavy" (max_concurrent_jobs at a time)."""
    key = (database_url(), job.id, job.created_at)
    if key not in _lanes:
        from core.kinds import spec_from_dict, traits

        if traits(job.kind).service:
            found = "service"
        else:
            try:
                found = "light" if spec_from_dict(job.spec).is_light() else "heavy"
            except Exception:  # a kind or spec this version reads differently: the safe lane
                found = "heavy"
        _lanes[key] = found
    found = _lanes[key]
    return "heavy" if found == "light" and config.max_light_jobs() == 0 else found


def lane_limit(name: str) -> tuple[int, str]:
    """(jobs of this lane that run at once, the setting that says so)."""
    if name == "light":
        return config.max_light_jobs(), "LLMDEV_MAX_LIGHT_JOBS"
    return config.max_concurrent_jobs(), "LLMDEV_MAX_CONCURRENT_JOBS"


def _fits(job: Job, running: list[Job]) -> bool:
    name = lane(job)
    if name == "service":
        return True
    return sum(lane(r) == name for r in running) < lane_limit(name)[0]


def _claim_next() -> Optional[int]:
    """Mark the oldest queued job that fits its lane running; return its id."""
    with session() as s:
        # the common case, every second from every open tab: nothing queued, no lock
        if s.scalars(select(Job.id).where(Job.status == "queued").limit(1)).first() is None:
            return None
    with session() as s:
        write_lock(s)
        running = list(s.scalars(select(Job).where(Job.status == "running")))
        queued = s.scalars(select(Job).where(Job.status == "queued").order_by(Job.id)).all()
        job = next((j for j in queued if _fits(j, running)), None)
        if job is None:
            return None
        now = clock(s)
        job.status, job.started_at, job.heartbeat_at = "running", now, now
        job.host, job.pid, job.progress_message = HOST, None, "starting worker"
        return job.id


def start_queued() -> list[int]:
    """Start workers for queued jobs while slots are free; returns the started ids."""
    started = []
    while (job_id := _claim_next()) is not None:
        _launch(job_id)
        started.append(job_id)
    return started


def worker_command(job_id: int) -> list[str]:
    return [sys.executable, "-m", "core.worker", str(job_id)]


def _launch(job_id: int) -> None:
    folder = run_dir(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    job = get(job_id)
    if job.runner == "ray":
        _launch_on_ray(job)
        return
    env = dict(os.environ)
    env.update(
        LLMDEV_HOME=str(data_home()),
        DATABASE_URL=database_url(),
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    try:
        with open(folder / "log.txt", "ab") as log:
            proc = subprocess.Popen(
                worker_command(job_id),
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,  # survives Ctrl+C / restart of whoever started it
            )
    except OSError as exc:
        finish(job_id, "failed", error_class="crashed", error=f"could not start the worker: {exc}")
        return
    _children.append(proc)
    with session() as s:
        s.execute(update(Job).where(Job.id == job_id, Job.pid.is_(None)).values(pid=proc.pid))


def _launch_on_ray(job: Job) -> None:
    from core.jobs import ray_runner

    sid = ray_runner.submission_id(job.id)
    with session() as s:  # recorded first: a cancel while it is being submitted can stop it
        s.execute(update(Job).where(Job.id == job.id).values(runner_id=sid, progress_message="waiting for the Ray cluster"))
    try:
        ray_runner.submit(job.id, sid, job.spec, worker_command(job.id), run_dir(job.id))
    except Exception as exc:
        finish(job.id, "failed", error_class="crashed", error=f"could not submit it to the Ray cluster: {exc}")
        return
    with session() as s:
        s.add(Event(message=f"Job {job.id} submitted to the Ray cluster as {sid}", job_id=job.id))


def _reap_children() -> None:
    for proc in list(_children):
        if proc.poll() is not None:
            try:
                _children.remove(proc)
            except ValueError:  # another Streamlit session's thread got there first
                pass


def _ray_trouble(job: Job, now: datetime) -> Optional[str]:
    """Why a running Ray job's worker is gone, or None while it is alive: the Ray
    job ended and nobody recorded an end, the cluster did not start it in time,
    or its heartbeat went stale."""
    from core.jobs import ray_runner

    state = ray_runner.status(job)
    if state in ray_runner.ENDED:
        if job.pid is None:  # it never got as far as claiming the job
            log = (ray_runner.logs(job) or "").strip().splitlines()
            return (f"the Ray job {job.runner_id} ended {state} before its worker started"
                    + (f": {log[-1]}" if log else "") + " (the full log is on the Ray dashboard)")
        return (f"the worker is gone without reporting an end: the Ray job {job.runner_id} ended {state} "
                "(killed, out of memory, or its node went away)")
    if job.pid is None:  # submitted (or being submitted), not claimed by a worker yet
        waited = now - (job.started_at or job.created_at)
        if waited < timedelta(seconds=ray_runner.start_timeout_s()):
            return None
        return (f"the Ray cluster did not start it within {ray_runner.start_timeout_s():g} s ({state or 'no answer'}): "
                f"the cluster may lack free resources ({ray_runner.START_TIMEOUT_ENV} sets the wait)")
    if job.heartbeat_at is not None and now - job.heartbeat_at < timedelta(seconds=config.LOST_AFTER_S):
        return None
    return (f"the worker's heartbeat stopped {config.LOST_AFTER_S:g} s ago (the Ray job {job.runner_id} is "
            f"{state or 'not answering'}): its node may have gone away")


def _worker_alive(job: Job, now: datetime) -> bool:
    """A local job's worker (a Ray job's: _ray_trouble)."""
    if job.host and job.host != HOST:
        # Another machine's worker (shared PostgreSQL): only its heartbeat tells.
        return job.heartbeat_at is not None and now - job.heartbeat_at < timedelta(seconds=config.LOST_AFTER_S)
    if job.pid is None:
        # Claimed but not launched yet (or the launcher died right there).
        started = job.started_at or job.created_at
        return now - started < timedelta(seconds=30)
    alive = worker_alive(job.pid, job.id)
    if alive is None:  # unidentifiable for now: trust a recent heartbeat
        return job.heartbeat_at is not None and now - job.heartbeat_at < timedelta(seconds=config.LOST_AFTER_S)
    return alive


def refresh(start: bool = True) -> None:
    """Mark dead workers lost, escalate overdue cancels, start queued jobs (unless
    `start` is off: a worker on a Ray node leaves that to the app)."""
    _reap_children()
    with session() as s:
        now = clock(s)  # the clock the workers' heartbeats are written with, wherever they run
        running = s.scalars(select(Job).where(Job.status == "running")).all()
    for job in running:
        trouble = _ray_trouble(job, now) if job.runner == "ray" else None
        alive = trouble is None if job.runner == "ray" else _worker_alive(job, now)
        if job.cancel_requested_at is not None:
            # the worker kills its own job after the grace period; this is the
            # backstop for a worker that cannot (margin: 10 s)
            grace = config.pause_grace_s() if job.stop_mode == "pause" else config.cancel_grace_s()
            overdue = now - job.cancel_requested_at > timedelta(seconds=grace + 10)
            if alive and overdue and (job.runner == "ray" or job.host == HOST):
                _stop_worker(job)
                alive = False
            if not alive:
                finish(job.id, stopped_status(job.kind), error="cancelled")
        elif trouble is not None:
            _stop_worker(job)  # a Ray job still pending, or running with a silent worker, frees its node
            finish(job.id, "failed", error_class="lost", error=trouble)
        elif not alive:
            finish(
                job.id,
                "failed",
                error_class="lost",
                error="the worker process is gone (killed, out of memory, or the machine restarted) "
                "without reporting an end",
            )
    if start:
        start_queued()


def _stop_worker(job: Job) -> None:
    """Kill a job's worker for good: its process group here, its Ray job there."""
    if job.runner == "ray":
        from core.jobs import ray_runner

        ray_runner.stop(job)
    else:
        _kill(job.pid, signal.SIGKILL)


def _kill(pid: Optional[int], sig: int) -> None:
    """Signal a worker's process group (the worker leads its own session)."""
    if not pid:
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stopped_status(kind: str) -> str:
    """How a job of this kind ends when asked to stop: a service "stopped" (that
    is what it is for), anything else "cancelled"."""
    from core.kinds import traits

    return "stopped" if traits(kind).service else "cancelled"


def cancel(job_id: int, mode: str = "cancel", by: Optional[Actor] = None) -> str:
    """Ask a job to stop, for `by` (its owner or an admin; default: the machine's
    owner). A queued job ends at once; a running one gets SIGTERM (a graceful stop;
    its worker kills it after the grace period) and SIGKILL on a second cancel.
    mode="pause" asks a training job to write a checkpoint first, so it can be
    resumed. Returns what happened, in words."""
    if mode not in ("cancel", "pause"):
        raise ValueError(f"mode {mode!r}: use cancel or pause")
    by = by or accounts.terminal()
    job = get(job_id)
    accounts.require_change(by, job.owner_id, f"job {job_id}", mode)
    said = _cancel(job, mode)
    audit.record(by, mode, f"job {job_id}", said)
    return said


def _cancel(job: Job, mode: str) -> str:
    job_id = job.id
    if mode == "pause":
        from core.kinds import traits

        if not traits(job.kind).resumes:
            raise ValueError(f"job {job_id} is a {job.kind} job: it cannot continue from a checkpoint, so it is not paused; cancel it instead")
    ended = stopped_status(job.kind)
    if job.status == "queued":
        if finish(job_id, ended, error="cancelled before it started", only_from=("queued",)):
            return f"{ended} (it had not started)"
        job = get(job_id)  # it started in the meantime: stop it like a running one
    if job.status in TERMINAL:
        return f"already {job.status}"
    if job.runner == "ray" and job.pid is None:
        # on the cluster but no worker has claimed it: stop the Ray job (a worker that claims
        # it now finds it ended and does not start it)
        _stop_worker(job)
        if finish(job_id, ended, error="cancelled before it started on the Ray cluster"):
            return f"{ended} (it had not started on the Ray cluster)"
        job = get(job_id)
        if job.status in TERMINAL:
            return f"already {job.status}"
    # a Ray job's worker reads the request from the database; the Ray job is stopped on a second cancel
    local = job.runner == "local" and job.host == HOST and worker_alive(job.pid, job_id) is not False
    if job.cancel_requested_at is not None:
        if local or job.runner == "ray":
            _stop_worker(job)
        finish(job_id, ended, error="cancelled (killed on second cancel)")
        start_queued()
        return "killed"
    with session() as s:
        asked = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(
                cancel_requested_at=db_now(),
                stop_mode=mode,
                progress_message="pausing: writing a checkpoint" if mode == "pause" else "stopping" if ended == "stopped" else "cancelling",
            )
        ).rowcount
        if asked:
            asked_for = "Pause" if mode == "pause" else "Stop" if ended == "stopped" else "Cancel"
            s.add(Event(message=f"{asked_for} requested for job {job_id}", job_id=job_id))
    if not asked:
        return f"already {get(job_id).status}"
    if local and (job.result or {}).get("processes", 1) == 1:
        _kill(job.pid, signal.SIGTERM)
    # a DDP job, or a worker on another host, reads the request from the database
    return "stopping"


def finish(
    job_id: int,
    status: str,
    *,
    error_class: Optional[str] = None,
    error: Optional[str] = None,
    result: Optional[dict] = None,
    only_from: tuple[str, ...] = ACTIVE,
) -> bool:
    """Move an active job to a terminal state; False if it was no longer in one
    of the `only_from` states (someone else ended or started it first)."""
    values: dict[str, Any] = dict(status=status, finished_at=db_now(), log_tail=read_log_tail(job_id))
    if status == "succeeded":
        values.update(progress_step=func.coalesce(Job.progress_total, Job.progress_step), progress_message="done")
    elif status in STOPPED:
        values.update(error_class=None, error=error, progress_message=status)
    else:
        values.update(error_class=error_class, error=error)
    if result is not None:
        values["result"] = result
    with session() as s:
        write_lock(s)
        changed = s.execute(
            update(Job).where(Job.id == job_id, Job.status.in_(only_from)).values(**values)
        ).rowcount
        if not changed:
            return False
        job = s.get(Job, job_id)
        models.settle_outputs(s, job)
        datasets.settle_outputs(s, job)
        exports.settle_outputs(s, job)
        what = {"succeeded": "succeeded", "cancelled": "was cancelled", "paused": "was paused", "stopped": "was stopped"}.get(
            status, f"failed ({error_class})"
        )
        s.add(Event(message=f"Job {job_id} {what}: {job.title}", job_id=job_id))
    return True


def read_log_tail(job_id: int, lines: int = LOG_TAIL_LINES) -> str:
    path = log_path(job_id)
    if not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 64_000))
        data = fh.read().decode("utf-8", errors="replace")
    return "\n".join(data.splitlines()[-lines:])


# --- reading ------------------------------------------------------------------


class JobNotFound(LookupError):
    pass


def get(job_id: int) -> Job:
    with session() as s:
        job = s.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"there is no job {job_id}")
    return job


def list_jobs(status: Optional[str] = None, limit: int = 200) -> list[Job]:
    q = select(Job).order_by(Job.id.desc()).limit(limit)
    if status:
        q = q.where(Job.status == status)
    with session() as s:
        return list(s.scalars(q).all())


def counts_by_status() -> dict[str, int]:
    with session() as s:
        rows = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: n for status, n in rows}


def metrics(job_id: int) -> dict[str, list[tuple[int, float]]]:
    """{name: [(step, value), ...]} in step order."""
    with session() as s:
        rows = s.execute(
            select(Metric.name, Metric.step, Metric.value)
            .where(Metric.job_id == job_id)
            .order_by(Metric.name, Metric.step)
        ).all()
    out: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in rows:
        out.setdefault(name, []).append((step, value))
    return out


def metrics_signature(job_id: int) -> tuple[int, int]:
    """(points, newest point id) of a job's metrics: changes exactly when a point
    is added, so a chart is rebuilt only then."""
    with session() as s:
        count, newest = s.execute(select(func.count(Metric.id), func.max(Metric.id)).where(Metric.job_id == job_id)).one()
    return int(count), int(newest or 0)


def last_metric(job_id: int, name: str) -> Optional[float]:
    """The newest value of one metric of a job, else of the runs it resumed."""
    while job_id is not None:
        with session() as s:
            value = s.scalar(select(Metric.value).where(Metric.job_id == job_id, Metric.name == name)
                             .order_by(Metric.step.desc(), Metric.id.desc()).limit(1))
            if value is not None:
                return value
            job_id = s.scalar(select(Job.resumed_from).where(Job.id == job_id))
    return None


def metrics_with_history(job_id: int) -> dict[str, list[tuple[int, float]]]:
    """A job's metrics preceded by those of the runs it resumed, up to where it
    took over: the loss curve continues across a pause."""
    series = metrics(job_id)
    job = get(job_id)
    seen = {job_id}
    while job.resumed_from and job.resumed_from not in seen:
        seen.add(job.resumed_from)
        start = min((p[0] for pts in series.values() for p in pts), default=None)
        for name, pts in metrics(job.resumed_from).items():
            earlier = [p for p in pts if start is None or p[0] < start]
            series[name] = earlier + series.get(name, [])
        job = get(job.resumed_from)
    return series


def recent_events(limit: int = 15) -> list[Event]:
    with session() as s:
        return list(s.scalars(select(Event).order_by(Event.id.desc()).limit(limit)).all())


@dataclass
class Progress:
    step: int
    total: Optional[int]
    fraction: Optional[float]
    message: str
    elapsed_s: Optional[float]
    eta_s: Optional[float]


def progress(job: Job) -> Progress:
    end = job.finished_at or clock_now()  # the clock its start was stamped with (an app host's may be off)
    elapsed = (end - job.started_at).total_seconds() if job.started_at else None
    total = job.progress_total
    fraction = None
    eta = None
    message = waiting_for(job) if job.status == "queued" else job.progress_message
    if job.status == "succeeded":
        fraction = 1.0
    elif total:
        fraction = min(1.0, job.progress_step / total)
        # past the last step the job is finishing (its message names the phase): no ETA of 0 s
        if job.status == "running" and 0 < job.progress_step < total and elapsed:
            eta = elapsed / job.progress_step * (total - job.progress_step)
    return Progress(job.progress_step, total, fraction, message, elapsed, eta)


def waiting_for(job: Job) -> str:
    """Why a queued job has not started, in words: its place in its lane and what
    holds the lane."""
    name = lane(job)
    if name == "service":
        return "queued: starting"
    with session() as s:
        running = [r for r in s.scalars(select(Job).where(Job.status == "running")) if lane(r) == name]
        ahead = [q for q in s.scalars(select(Job).where(Job.status == "queued", Job.id < job.id)) if lane(q) == name]
    limit, setting = lane_limit(name)
    if len(running) < limit and not ahead:
        return "queued: starting"
    place = len(ahead) + 1
    text = f"queued: {place}{'th' if place % 100 in (11, 12, 13) else _SUFFIX.get(place % 10, 'th')} in line"
    if running:
        holders = ", ".join(f"#{r.id} {r.title}" for r in running[:2]) + (" …" if len(running) > 2 else "")
        text += f", waiting for {holders} to finish"
    return text + f" ({limit} {name} job{'s' if limit != 1 else ''} at a time: {setting})"


_SUFFIX = {1: "st", 2: "nd", 3: "rd"}


def cli_command(job: Job) -> str:
    """The command line that replays this job from a terminal."""
    from core.kinds import spec_from_dict

    try:
        return spec_from_dict(job.spec).replay()
    except ValueError:  # a spec no longer valid (its input file is gone): the job itself
        return f"python -m core.worker {job.id}"


def spec_file_command(job: Job) -> str:
    """The command that runs this job's spec file from its run folder as it is
    (spec.yaml where the job wrote one, else spec.json, which YAML reads too)."""
    import shlex

    folder = run_dir(job.id)
    path = folder / "spec.yaml" if (folder / "spec.yaml").exists() else folder / "spec.json"
    return f"python -m core run {shlex.quote(str(path))} --wait"


def job_dict(job: Job) -> dict[str, Any]:
    """The JSON view of a job (`jobs show ID --json`)."""
    p = progress(job)
    return {
        "id": job.id,
        "kind": job.kind,
        "title": job.title,
        "status": job.status,
        "pid": job.pid,
        "host": job.host,
        "runner": job.runner,
        "runner_id": job.runner_id,
        "owner": accounts.owner_of(job.owner_id),
        "owner_id": job.owner_id,
        "progress": {
            "step": p.step,
            "total": p.total,
            "fraction": p.fraction,
            "message": p.message,
            "elapsed_s": p.elapsed_s,
            "eta_s": p.eta_s,
        },
        "error": job.error,
        "error_class": job.error_class,
        "model_ids": job.model_ids,
        "dataset_ids": job.dataset_ids,
        "result": job.result,
        "resumed_from": job.resumed_from,
        "stop_mode": job.stop_mode,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
        "command": cli_command(job),
        "spec": public_spec(job.spec),
        "log": str(log_path(job.id)),
    }


def public_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec to show: secrets (API keys) masked."""
    return {k: ("***" if k.endswith("api_key") and v else v) for k, v in (spec or {}).items()}


def wait(job_id: int, *, poll_s: float = 0.2, timeout_s: Optional[float] = None, on_poll=None) -> Job:
    """Block until the job ends (refreshing, so a lost worker is noticed)."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    while True:
        refresh()
        job = get(job_id)
        if on_poll is not None:
            on_poll(job)
        if job.status in TERMINAL:
            return job
        if deadline and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {job.status} after {timeout_s:g} s")
        time.sleep(poll_s)
