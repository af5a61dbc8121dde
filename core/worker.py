"""Run one job: `python -m core.worker <job_id>`.

Started by `core.jobs` in its own process session with stdout/stderr going to
runs/<id>/log.txt; it can also be run by hand on a queued job. It writes a
heartbeat, progress and metrics to the database, stops gracefully on SIGTERM
(or a cancel request seen in the database), records how it ended, and starts the
next queued job.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback

from core.run import BadInput, Cancelled, Run

# What runs each job kind ("module:function", imported only when needed so the
# SIGTERM handler is in place before the seconds of torch imports).
RUNNERS: dict[str, str] = {
    "create_model": "core.model_jobs:run_create_model",
    "add_starter": "core.model_jobs:run_add_starter",
    "import_model": "core.model_jobs:run_import_model",
}


def _heartbeat(job_id: int, stop: threading.Event, done: threading.Event) -> None:
    """Beat every HEARTBEAT_S; a cancel request in the database stops the job too
    (that is how a cancel from another machine reaches this worker)."""
    from sqlalchemy import select, update

    from core import config
    from storage.db import session
    from storage.tables import Job, utcnow

    while not done.wait(config.HEARTBEAT_S):
        try:
            with session() as s:
                s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(heartbeat_at=utcnow()))
                row = s.execute(select(Job.status, Job.cancel_requested_at).where(Job.id == job_id)).first()
            if row is None or row.status != "running" or row.cancel_requested_at is not None:
                stop.set()
        except Exception as exc:  # a database hiccup must not kill the job
            print(f"heartbeat: {exc}", file=sys.stderr, flush=True)


def _classify(exc: BaseException) -> tuple[str, str]:
    """(error class, message a person can act on)."""
    from core.specs import SpecError

    name = type(exc).__name__
    if isinstance(exc, (BadInput, SpecError)):
        return "bad_input", str(exc)
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "out_of_memory", f"out of memory: {exc}. Try a smaller batch size, sequence length or model."
    return "crashed", f"{name}: {exc}"


def _load_runner(kind: str):
    target = RUNNERS.get(kind)
    if target is None:
        raise BadInput(f"no worker for job kind {kind!r}")
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str]) -> int:
    stop = threading.Event()
    # First thing: a SIGTERM from now on asks for a graceful stop.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m core.worker JOB_ID", file=sys.stderr)
        return 2
    job_id = int(argv[0])

    from sqlalchemy import update

    from core import jobs
    from core.specs import spec_from_dict
    from storage.db import session
    from storage.tables import Job, utcnow

    job = jobs.get(job_id)
    if job.status == "queued":  # started by hand: claim it
        with session() as s:
            claimed = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(status="running", started_at=utcnow(), heartbeat_at=utcnow(), host=jobs.HOST)
            ).rowcount
        if not claimed:
            job = jobs.get(job_id)
    elif job.status != "running":
        print(f"job {job_id} is {job.status}; nothing to do", file=sys.stderr)
        return 1
    with session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(pid=os.getpid(), host=jobs.HOST, heartbeat_at=utcnow(), progress_message="loading")
        )

    done = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(job_id, stop, done), daemon=True)
    beat.start()
    print(f"worker pid {os.getpid()} running job {job_id} ({job.kind})", flush=True)
    status, error_class, error, result = "failed", "crashed", "", None
    try:
        spec = spec_from_dict(json.loads((jobs.run_dir(job_id) / "spec.json").read_text()))
        runner = _load_runner(spec.kind)
        run = Run(job_id, stop)
        run.check_cancel()
        result = runner(spec, run) or {}
        status, error_class, error = "succeeded", None, None
    except Cancelled:
        status, error_class, error = "cancelled", None, "cancelled"
        print("cancelled: stopped cleanly", flush=True)
    except BaseException as exc:
        traceback.print_exc()
        sys.stderr.flush()
        error_class, error = _classify(exc)
    finally:
        done.set()
    jobs._finish(job_id, status, error_class=error_class, error=error, result=result)
    print(f"job {job_id} {status}" + (f": {error}" if error and status == "failed" else ""), flush=True)
    # Drain the queue: no daemon needed.
    try:
        jobs.refresh()
    except Exception:
        traceback.print_exc()
    return 0 if status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
