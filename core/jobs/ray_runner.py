"""Jobs on a Ray cluster (`runner: ray`), through the Ray Jobs API.

The job's command is the one a local job runs, `python -m core.worker <id>`,
submitted as a Ray job (submission id `llmdev-<id>-<random>`, the platform's job
id in its metadata) with the CPUs and GPUs the spec asks for. Its output goes
both to the Ray job's log and to runs/<id>/log.txt. The worker on the node
claims the job and writes status, heartbeat, progress, metrics and the result to
the platform's database as a local one does: the database stays the one source
of truth, and no job is a subprocess of the app, so an app restart loses nothing.

What that needs, checked before the first job on a cluster (`check`) and refused
with what to change: a cluster that answers at the address, the resources the
spec asks for, a database every node reaches (SQLite only when the cluster is
this machine), and the data home and the platform at the same paths on the
nodes (a small probe job reads a token file the app writes there).

On Ray, a cancel reaches the worker through the database (it polls at each
heartbeat); the Ray job is stopped after the grace period as the backstop. A Ray
job that ends (FAILED, STOPPED, or even SUCCEEDED) while the database still says
running, or whose heartbeat goes stale, is lost; one that does not start within
LLMDEV_RAY_START_TIMEOUT_S fails saying so.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core import config
from core.network import loopback
from storage.db import data_home, database_url

ADDRESS_ENV = "LLMDEV_RAY_ADDRESS"
ADDRESS_SETTING = "ray_address"
START_TIMEOUT_ENV = "LLMDEV_RAY_START_TIMEOUT_S"
ENDED = ("SUCCEEDED", "FAILED", "STOPPED")
PASSED_ENV = ("HF_", "TRANSFORMERS_", "TOKENIZERS_", "OMP_NUM_THREADS", "LLMDEV_", "CUDA_VISIBLE_DEVICES")
"""Environment a job takes along to its node (the node's own environment is the rest)."""
PROBE_TTL_S = 600.0
PROBE_TIMEOUT_S = 120.0
REPO_ROOT = Path(__file__).resolve().parents[2]


class RayUnavailable(RuntimeError):
    """The cluster cannot take this job; the message says what to change."""


def address() -> str:
    """The cluster's dashboard address: LLMDEV_RAY_ADDRESS, else the one set in the app."""
    value = os.environ.get(ADDRESS_ENV, "").strip() or str(config.get_setting(ADDRESS_SETTING, "") or "").strip()
    if value and "://" not in value:
        value = "http://" + value
    return value.rstrip("/")


def set_address(value: str, by) -> None:
    """Keep the cluster's address in the database (the Jobs page's setting; an admin's)."""
    from core.access import accounts, audit, outbound
    from storage.db import session
    from storage.tables import Setting

    accounts.require(by, "admin", "changing the Ray cluster's address")
    value = value.strip()
    if value:
        try:
            outbound.check_url(value if "://" in value else "http://" + value, "the Ray address")
        except outbound.Refused as exc:
            raise RayUnavailable(str(exc)) from None
    before = address()
    with session() as s:
        row = s.get(Setting, ADDRESS_SETTING)
        if row is None:
            s.add(Setting(key=ADDRESS_SETTING, value=value.strip()))
        else:
            row.value = value.strip()
    audit.record(by, "set Ray address", "", f"{before or '(none)'} -> {value or '(none)'}")


def start_timeout_s() -> float:
    return config._number(START_TIMEOUT_ENV, 300.0, 1)


_clients: dict[str, Any] = {}


def client(where: Optional[str] = None):
    """A JobSubmissionClient for the cluster (one per address and process)."""
    where = where or address()
    if not where:
        raise RayUnavailable(f"no Ray cluster is set: set {ADDRESS_ENV} (e.g. http://127.0.0.1:8265) or the address on the Jobs page")
    if where not in _clients:
        from ray.job_submission import JobSubmissionClient

        from core.access import outbound

        try:
            outbound.check_url(where, "the Ray address")
        except outbound.Refused as exc:
            raise RayUnavailable(str(exc)) from None
        try:
            _get(where, "/api/version")  # answers within seconds, or not at all
            _clients[where] = JobSubmissionClient(where)
        except Exception as exc:
            raise RayUnavailable(
                f"the Ray cluster at {where} does not answer ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                f"Start it (ray start --head) or fix {ADDRESS_ENV}"
            ) from None
    return _clients[where]


def _get(where: str, path: str, timeout: float = 3.0) -> Any:
    """GET a JSON answer of the cluster's dashboard, never waiting long (the Ray SDK's
    own requests have no timeout, and the app asks on every page view)."""
    import urllib.request

    with urllib.request.urlopen(where + path, timeout=timeout) as response:
        return json.loads(response.read().decode() or "null")


_states: dict[str, tuple[float, Optional[str]]] = {}
_silent: dict[str, float] = {}
STATE_TTL_S = 3.0
SILENT_TTL_S = 30.0


# --- before the first job: can the cluster take it? ------------------------------------


@dataclass
class Cluster:
    address: str
    hosts: list[str]
    ips: list[str]
    cpus: float
    gpus: float
    checked: float = field(default_factory=time.monotonic)

    @property
    def local(self) -> bool:
        """Every node is this machine."""
        import psutil

        mine = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs} | {"127.0.0.1"}
        return all(ip in mine for ip in self.ips)


_probed: dict[tuple[str, str], Cluster] = {}


def cluster(where: Optional[str] = None) -> Cluster:
    """The cluster's nodes and resources, and proof (a probe job) that a node sees
    this data home and the platform's interpreter at the same paths."""
    where = where or address()
    key = (where, str(data_home()))
    known = _probed.get(key)
    if known is not None and time.monotonic() - known.checked < PROBE_TTL_S:
        return known
    jobs = client(where)
    from ray.util.state import list_nodes

    try:
        nodes = [n for n in list_nodes(address=where, timeout=20) if n.state == "ALIVE"]
    except Exception as exc:
        raise RayUnavailable(f"the Ray cluster at {where} did not list its nodes: {exc}") from None
    found = Cluster(
        address=where,
        hosts=sorted({n.node_name for n in nodes}),
        ips=sorted({n.node_ip for n in nodes}),
        # what one job can get: a Ray job's entrypoint runs on one node
        cpus=max((float((n.resources_total or {}).get("CPU", 0)) for n in nodes), default=0.0),
        gpus=max((float((n.resources_total or {}).get("GPU", 0)) for n in nodes), default=0.0),
    )
    _probe(jobs, where, found.ips)
    _probed[key] = found
    return found


def _probe(jobs, where: str, ips: list[str]) -> None:
    """On every node (Ray's `node:<ip>` resource pins a job there), run a tiny Ray
    job that imports the platform and reads a fresh token from the data home: the
    home and the code are where the workers will look, whichever node gets them."""
    folder = data_home() / "ray-probe"
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    path = folder / token
    path.write_text(token)
    code = ("import pathlib, sys; import core.worker; p = pathlib.Path(sys.argv[1]); "
            "print('LLMDEV-PROBE', p.read_text() if p.exists() else 'missing')")
    entrypoint = (f"cd {shlex.quote(str(REPO_ROOT))} && {shlex.quote(sys.executable)} -c {shlex.quote(code)} "
                  f"{shlex.quote(str(path))}")
    ended: dict[str, tuple[str, str]] = {}
    try:
        sids = {ip: _submit(jobs, where, entrypoint=entrypoint, entrypoint_num_cpus=0, metadata={"llmdev": "probe"},
                            entrypoint_resources={f"node:{ip}": 0.001}, submission_id=f"llmdev-probe-{token}-{n}")
                for n, ip in enumerate(ips)}
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while len(ended) < len(sids):
            for ip, sid in sids.items():
                if ip not in ended and (status := str(jobs.get_job_status(sid).value)) in ENDED:
                    ended[ip] = (status, jobs.get_job_logs(sid))
                    try:
                        jobs.delete_job(sid)  # not left in the cluster's job list
                    except Exception:
                        pass
            if len(ended) < len(sids) and time.monotonic() > deadline:
                for ip in set(sids) - set(ended):
                    jobs.stop_job(sids[ip])
                raise RayUnavailable(f"the probe job on node {', '.join(sorted(set(sids) - set(ended)))} of the Ray cluster "
                                     f"at {where} did not end within {PROBE_TIMEOUT_S:g} s: the cluster may be busy")
            time.sleep(0.3)
    finally:
        path.unlink(missing_ok=True)
    for ip, (status, logs) in sorted(ended.items()):
        if status != "SUCCEEDED":
            raise RayUnavailable(
                f"node {ip} of the Ray cluster at {where} could not run the platform ({sys.executable} in {REPO_ROOT}; "
                f"{status}: {logs.strip().splitlines()[-1] if logs.strip() else 'no output'}): install the platform "
                "and its environment at the same paths on every node"
            )
        if f"LLMDEV-PROBE {token}" not in logs:
            raise RayUnavailable(
                f"node {ip} of the Ray cluster at {where} does not see this data home ({data_home()}): "
                "put it on storage every node mounts at the same path (a shared filesystem) and set LLMDEV_HOME to it"
            )


def _submit(jobs, where: str, **job) -> str:
    """submit_job, waiting out a head that has just started (its job agent comes up
    a few seconds after the dashboard); RayUnavailable with Ray's reason otherwise."""
    for attempt in itertools.count():
        try:
            return jobs.submit_job(**job)
        except Exception as exc:
            if "No available agent" in str(exc) and attempt < 20:
                time.sleep(0.5)
                continue
            raise RayUnavailable(f"the Ray cluster at {where} refused the job: {exc}") from None


def check(spec) -> None:
    """Refuse, before anything is written, a Ray job the cluster cannot run."""
    from core.spec import SpecError

    try:
        found = cluster()
    except RayUnavailable as exc:
        raise SpecError("runner", str(exc)) from None
    if database_url().startswith("sqlite") and not found.local:
        raise SpecError(
            "runner",
            f"the Ray cluster at {found.address} has nodes on other machines ({', '.join(found.ips)}), which cannot "
            "reach this machine's SQLite database: set DATABASE_URL to a PostgreSQL server every node reaches",
        )
    if spec.service and not found.local and _loopback_only(spec):
        raise SpecError(
            "host", f"a service on the Ray cluster at {found.address} runs on another machine: a loopback address "
            "would reach nobody; listen on 0.0.0.0 (with an API key) or run it here (runner local)",
        )
    cpus, gpus = needs(spec)
    if gpus > found.gpus:
        raise SpecError("gpus", f"the job asks for {gpus:g} GPU(s); the largest node of the Ray cluster at {found.address} has {found.gpus:g}")
    if cpus > found.cpus:
        raise SpecError("threads", f"the job asks for {cpus:g} CPUs; the largest node of the Ray cluster at {found.address} has {found.cpus:g}")


def _loopback_only(spec) -> bool:
    return loopback(getattr(spec, "host", "127.0.0.1"))


def needs(spec) -> tuple[float, float]:
    """(CPUs, GPUs) the Ray job asks for: its torch threads (1 when chosen on the
    node) and its GPUs (at least one per training process for QLoRA)."""
    cpus = float(spec.threads or 1)
    gpus = float(spec.gpus)
    if getattr(spec, "method", "") == "qlora":
        gpus = max(gpus, float(getattr(spec, "processes", 0) or 1))
    return cpus, gpus


# --- a job's life on the cluster ---------------------------------------------------------


def submission_id(job_id: int) -> str:
    """The Ray job's id, made (and recorded) before it is submitted: a cancel in between can stop it."""
    return f"llmdev-{job_id}-{secrets.token_hex(3)}"


WORKER_ENV = "worker-env.json"
"""runs/<id>/worker-env.json: what the worker takes along that the Ray dashboard
must not show (DATABASE_URL with its password, tokens), read and deleted by the
worker as it starts (core/worker.py)."""


def submit(job_id: int, sid: str, spec: dict, worker_command: list[str], run: Path) -> str:
    """Submit the worker as the Ray job `sid`; returns it."""
    from core.kinds import spec_from_dict

    cpus, gpus = needs(spec_from_dict(spec))
    private = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV)}
    private.update(DATABASE_URL=database_url())
    path = run / WORKER_ENV
    path.touch(mode=0o600)
    path.write_text(json.dumps(private))
    env = dict(  # shown by the Ray dashboard: nothing secret
        LLMDEV_HOME=str(data_home()),
        PYTHONPATH=str(REPO_ROOT),
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        LLMDEV_RUNNER="ray",
        LLMDEV_RAY_SUBMISSION_ID=sid,  # the worker claims only the job that names this Ray job
    )
    if not gpus:
        # Ray narrows CUDA_VISIBLE_DEVICES to the GPUs it gave a job, and leaves a job that asked
        # for none all of the node's: a CPU job must not take a GPU another job was given
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = " ".join(shlex.quote(part) for part in worker_command)
    # the worker's output: to the Ray job's log and to the run folder (the job's status is the worker's)
    log = run / "log.txt"
    entrypoint = f"cd {shlex.quote(str(REPO_ROOT))} && set -o pipefail && {command} 2>&1 | tee -a {shlex.quote(str(log))}"
    return _submit(
        client(), address(),
        entrypoint=f"bash -c {shlex.quote(entrypoint)}",
        submission_id=sid,
        metadata={"llmdev_job_id": str(job_id), "llmdev_home": str(data_home()), "llmdev_host": socket.gethostname()},
        runtime_env={"env_vars": env},
        entrypoint_num_cpus=cpus,
        entrypoint_num_gpus=gpus or None,
    )


def load_worker_env(job_id: int) -> None:
    """In the worker on a Ray node: take the environment the app left for it, and remove the file."""
    path = data_home() / "runs" / str(job_id) / WORKER_ENV
    if os.environ.get("LLMDEV_RUNNER") != "ray" or not path.exists():
        return
    os.environ.update(json.loads(path.read_text()))
    path.unlink(missing_ok=True)


def status(job) -> Optional[str]:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED; None when the cluster does not
    answer (asked again after 30 s) or the job was not submitted. Cached for 3 s."""
    if not job.runner_id:
        return None
    now = time.monotonic()
    known = _states.get(job.runner_id)
    if known is not None and now - known[0] < STATE_TTL_S:
        return known[1]
    where = address()
    if not where or now - _silent.get(where, -SILENT_TTL_S) < SILENT_TTL_S:
        return None
    try:
        state = str((_get(where, f"/api/jobs/{job.runner_id}") or {}).get("status") or "") or None
    except Exception:
        _silent[where] = now
        return None
    _states[job.runner_id] = (now, state)
    return state


def stop(job) -> None:
    """Stop the Ray job (nothing happens to one that has ended)."""
    if not job.runner_id:
        return
    try:
        client().stop_job(job.runner_id)
    except Exception:
        pass
    _states.pop(job.runner_id, None)


def logs(job) -> Optional[str]:
    """The Ray job's log, or None when the cluster does not answer."""
    where = address()
    if not job.runner_id or not where or time.monotonic() - _silent.get(where, -SILENT_TTL_S) < SILENT_TTL_S:
        return None
    try:
        return str((_get(where, f"/api/jobs/{job.runner_id}/logs") or {}).get("logs") or "")
    except Exception:
        _silent[where] = time.monotonic()
        return None


def dashboard_url(job) -> str:
    return f"{address()}/#/jobs/{job.runner_id}" if job.runner_id else address()
