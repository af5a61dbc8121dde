"""Run one job: `python -m core.worker <job_id>`.

Started by `core.jobs.lifecycle` as the leader of its own process session, stdout/stderr
going to runs/<id>/log.txt; it can also be run by hand on a queued job.

It is two processes. This one, the supervisor, imports no torch: it claims the
job, writes the heartbeat, and starts the job process (`--job-process`), which loads the
spec, runs the job function and records progress, metrics and how it ended.
The split is what makes a job's end certain: when the job process dies without
a word (out-of-memory killer, segfault, SIGKILL), the supervisor records it;
when a cancelled job does not stop within the grace period, the supervisor
kills it; either way it then starts the next queued job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback

from core.jobs.run import BadInput, Cancelled, Run

ON_RAY = os.environ.get("LLMDEV_RUNNER") == "ray"
"""This worker is a Ray job on a cluster's node."""
SIGNAL_NAMES = {signal.SIGKILL: "SIGKILL", signal.SIGTERM: "SIGTERM", signal.SIGSEGV: "SIGSEGV", signal.SIGABRT: "SIGABRT"}


def _classify(exc: BaseException) -> tuple[str, str]:
    """(error class, message a person can act on)."""
    from core.spec import SpecError

    name, text = type(exc).__name__, str(exc)
    if isinstance(exc, (BadInput, SpecError)):
        return "bad_input", text
    low = text.lower()
    if (
        isinstance(exc, MemoryError)
        or name == "OutOfMemoryError"
        or "out of memory" in low
        or "can't allocate memory" in low  # torch's CPU allocator
    ):
        return "out_of_memory", f"out of memory: {text}. Try a smaller batch size, sequence length or model."
    return "crashed", f"{name}: {text}"


# --- the job process ------------------------------------------------------------------


def _set_threads(job_id: int, spec, record: bool = False):
    """torch's threads for this job (core/threads.py), set before torch loads and
    then kept fitting while it runs (a Tuner the Run calls between steps); the
    choice goes into the run's environment.json."""
    from core import threads
    from core.jobs import lifecycle as jobs

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    light = jobs.lane(jobs.get(job_id)) == "light"
    choice = threads.for_job(job_id, spec.threads, processes=processes, light=light)
    threads.apply(choice.torch)
    print(f"torch threads: {choice.torch} ({choice.reason})", flush=True)
    if record:
        _record_threads(job_id, choice.as_dict())
    return threads.Tuner(choice, processes=processes, log=lambda line: print(line, flush=True))


def _record_threads(job_id: int, facts: dict) -> None:
    from core.jobs import lifecycle as jobs

    path = jobs.run_dir(job_id) / "environment.json"
    env = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(dict(env, threads=dict(env.get("threads") or {}, **facts)), indent=2) + "\n")


def run_job(job_id: int) -> int:
    """Load the spec, run the job function, record the end. SIGTERM = graceful stop."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    from core.jobs import lifecycle as jobs
    from core.kinds import KINDS, spec_from_dict

    if int(os.environ.get("RANK", "0")) != 0:
        # another DDP rank: it trains; rank 0 reports and records the end
        spec = spec_from_dict(json.loads((jobs.run_dir(job_id) / "spec.json").read_text()))
        tuner = _set_threads(job_id, spec)
        try:
            KINDS[spec.kind].run(spec, Run(job_id, stop, tuner))
        except Cancelled:
            pass
        return 0

    status, error_class, error, result = "failed", "crashed", "", None
    tuner = None
    try:
        spec = spec_from_dict(json.loads((jobs.run_dir(job_id) / "spec.json").read_text()))
        for name, (value, source) in spec.resolved().items():
            print(f"{name} = {value!r} ({source})", flush=True)
        tuner = _set_threads(job_id, spec, record=True)
        runner = KINDS[spec.kind].run
        run = Run(job_id, stop, tuner)
        run.check_cancel()
        result = runner(spec, run) or {}
        status, error_class, error = "succeeded", None, None
    except Cancelled as exc:
        paused = bool((exc.result or {}).get("paused"))
        ended = "paused" if paused else jobs.stopped_status(jobs.get(job_id).kind)
        status, error_class, error, result = ended, None, exc.message, exc.result
        print(f"{exc.message}: stopped cleanly", flush=True)
    except BaseException as exc:
        traceback.print_exc()
        sys.stderr.flush()
        error_class, error = _classify(exc)
    if tuner is not None and tuner.changes:
        _record_threads(job_id, {"changes": tuner.changes})
    jobs.finish(job_id, status, error_class=error_class, error=error, result=result)
    print(f"job {job_id} {status}" + (f": {error}" if error and status == "failed" else ""), flush=True)
    return 0 if status == "succeeded" else 1


# --- the supervisor -------------------------------------------------------------------


def _claim(job_id: int) -> bool:
    """Make this process the job's worker; False if it is not ours to run."""
    from sqlalchemy import or_, true, update

    from core.jobs import lifecycle as jobs
    from storage.db import db_now, session
    from storage.tables import Job

    me, now = os.getpid(), db_now()
    # a Ray job claims only the job that names it: a stale one (stopped while pending, started late)
    # must not take a job of the same id in a database that was reset since
    mine = Job.runner_id == os.environ.get("LLMDEV_RAY_SUBMISSION_ID", "") if ON_RAY else true()
    with session() as s:
        # queued: started by hand; running with no pid or ours: started by core.jobs.lifecycle
        claimed = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", mine)
            .values(status="running", started_at=now, heartbeat_at=now, host=jobs.HOST, pid=me)
        ).rowcount or s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running", or_(Job.pid.is_(None), Job.pid == me), mine)
            .values(pid=me, host=jobs.HOST, heartbeat_at=now, progress_message="loading")
        ).rowcount
    return bool(claimed)


def _processes(job) -> int:
    """How many training processes a job gets (DDP when more than one): what a
    training spec asks for, else one per GPU."""
    from core.kinds import traits

    if not traits(job.kind).trains:
        return 1  # (an unknown kind fails in the job process, saying so)
    asked = int((job.spec or {}).get("processes") or 0)
    if asked:
        return asked
    if job.runner == "ray":  # the GPUs the cluster gave it, one process each (the node may have more)
        from core.jobs.ray_runner import needs
        from core.kinds import spec_from_dict

        return max(1, int(needs(spec_from_dict(job.spec))[1]))
    from core.system import machine_info

    return max(1, len(machine_info()["gpus"]))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (torchrun and its ranks)."""
    import psutil

    try:
        procs = psutil.Process(pid).children(recursive=True) + [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def supervise(job_id: int) -> int:
    from sqlalchemy import select, update

    from core import config
    from core.jobs import lifecycle as jobs
    from storage.db import db_now, session
    from storage.tables import Job

    cancel_at: list[float] = []  # monotonic time of the first stop request

    def request_stop(*_) -> None:
        if not cancel_at:
            cancel_at.append(time.monotonic())
            if child is not None and child.poll() is None and _processes(job) == 1:
                child.send_signal(signal.SIGTERM)

    child = None
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    job = jobs.get(job_id)
    if not _claim(job_id):
        print(f"job {job_id} is {job.status} (worker pid {job.pid}); not starting it", file=sys.stderr)
        return 1
    print(f"worker pid {os.getpid()} running job {job_id} ({job.kind})", flush=True)
    if jobs.get(job_id).cancel_requested_at is not None:
        request_stop()
    if cancel_at:
        jobs.finish(job_id, jobs.stopped_status(job.kind), error="cancelled before it started")
        jobs.refresh(start=not ON_RAY)
        return 1

    # Same process group: a cancel's killpg reaches both processes.
    nproc = _processes(job)
    command = [sys.executable, "-m", "core.worker", str(job_id), "--job-process"]
    if nproc > 1:
        # DDP: torchrun starts one job process per device; they stop together on
        # a request read from the database (a SIGTERM would make torchrun kill them)
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}", "-m", *command[2:]]
        with session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(result={"processes": nproc}))
        print(f"starting {nproc} training processes under torchrun", flush=True)
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    killed = False
    next_beat = 0.0
    while True:
        try:
            code = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if cancel_at and not killed:
            # a pause writes a checkpoint first: it gets longer
            grace = config.pause_grace_s() if jobs.get(job_id).stop_mode == "pause" else config.cancel_grace_s()
            if now - cancel_at[0] > grace:
                print(f"did not stop within {grace:g} s of the cancel: killing it", flush=True)
                _kill_tree(child.pid)
                killed = True
        if now >= next_beat:
            next_beat = now + config.HEARTBEAT_S
            try:
                with session() as s:
                    s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(heartbeat_at=db_now()))
                    row = s.execute(select(Job.status, Job.cancel_requested_at).where(Job.id == job_id)).first()
                # a cancel from another machine arrives through the database
                if row is None or row.status != "running" or row.cancel_requested_at is not None:
                    request_stop()
            except Exception as exc:  # a database hiccup must not kill the job
                print(f"heartbeat: {exc}", file=sys.stderr, flush=True)

    # The job process records its own end; if it could not, say how it died.
    if cancel_at:
        ended = jobs.stopped_status(job.kind)
        jobs.finish(job_id, ended, error=f"{ended} (killed after the grace period)" if code < 0 else ended)
    elif code < 0:
        name = SIGNAL_NAMES.get(-code, f"signal {-code}")
        hint = " (SIGKILL from outside is most often the out-of-memory killer)" if -code == signal.SIGKILL else ""
        jobs.finish(job_id, "failed", error_class="lost", error=f"the job process was killed by {name}{hint}")
    else:
        jobs.finish(job_id, "failed", error_class="crashed", error=f"the job process exited with code {code} without reporting an end")
    # Drain the queue: no daemon needed. (Not from a Ray node: the jobs it would start
    # would be its own children, unseen by Ray, with the node's view of the cluster; the
    # app or the command line starts them when it next looks.)
    try:
        jobs.refresh(start=not ON_RAY)
    except Exception:
        traceback.print_exc()
    return 0 if jobs.get(job_id).status == "succeeded" else 1


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit() or argv[1:] not in ([], ["--job-process"]):
        print("usage: python -m core.worker JOB_ID", file=sys.stderr)
        return 2
    if argv[1:] == ["--job-process"]:
        return run_job(int(argv[0]))
    from core.jobs.ray_runner import load_worker_env

    load_worker_env(int(argv[0]))  # a Ray job: the settings the dashboard must not show
    return supervise(int(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
