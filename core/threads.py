"""How many threads torch uses, chosen from the cores this process may use and what
else runs on them, instead of torch's default (one per physical core). On a
small machine that default makes a job's threads wait on each other whenever
anything else runs (the app, a browser, another job): each parallel op ends at
its slowest thread, and a thread that lost its core holds all the others.

    choice = threads.for_job(job_id, spec.threads)   # the job process, before torch loads
    threads.apply(choice.torch)
    choice.as_dict()                                   # recorded in the run's environment.json

The app's own generation (the playground) uses `for_app()`. Nothing here
imports torch until `apply` is called.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import psutil

BROWSERS = ("chromium", "chrome", "firefox", "msedge", "safari", "brave", "opera")
ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class Choice:
    torch: int
    """torch's intra-op threads (and OMP/MKL's)."""
    cores: int
    """Cores this process may run on."""
    reason: str
    """Why this many, in words."""
    others: dict[str, Any] = field(default_factory=dict)
    """What else was running when it was chosen."""
    tuned: bool = True
    """Whether the Tuner may move it while the job runs (not a count that was set,
    nor a light job's single thread)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_cores() -> int:
    """Cores this process may use (its CPU affinity: a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def neighbours(skip: tuple[int, ...] = ()) -> dict[str, Any]:
    """Interactive programs running on this machine that need CPU now and then:
    the app (a Streamlit server) and web browsers. `skip`: our own processes."""
    app = browser = False
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        if p.info["pid"] in skip:
            continue
        name = (p.info["name"] or "").lower()
        cmd = " ".join(p.info["cmdline"] or [])
        if "streamlit" in cmd and " run " in f" {cmd} ":
            app = True
        elif any(b in name for b in BROWSERS):
            browser = True
    return {"app": app, "browser": browser}


def choose(cores: int, *, jobs: int = 1, interactive: bool = False) -> tuple[int, str]:
    """(threads, why) for one of `jobs` busy processes sharing `cores` while,
    if `interactive`, an app or a browser also wants CPU now and then.

    One core is left to the interactive neighbours (when there is more than
    one), so that no job thread is the one that lost its core; the jobs share
    the rest evenly."""
    jobs = max(1, jobs)
    free = cores - 1 if interactive and cores > 1 else cores
    why = f"{cores} core{'s' if cores != 1 else ''}"
    if free < cores:
        why += ", one left to the app and the browser"
    if jobs > 1:
        why += f", the rest shared by {jobs} running jobs"
    return max(1, free // jobs), why


def _asked(value: Optional[int], where: str) -> Optional[Choice]:
    if value:
        return Choice(torch=int(value), cores=usable_cores(), reason=f"set by {where}", tuned=False)
    return None


def setting() -> Optional[int]:
    """LLMDEV_JOB_THREADS (0 or unset: choose)."""
    raw = os.environ.get("LLMDEV_JOB_THREADS", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"LLMDEV_JOB_THREADS={raw!r}: expected a whole number (0 = chosen per job)") from None
    if value < 0:
        raise ValueError(f"LLMDEV_JOB_THREADS={raw!r}: must be 0 (chosen per job) or more")
    return value or None


def _running_jobs(exclude: Optional[int]) -> int:
    """Jobs running on this machine that compute (services and light jobs aside)."""
    from sqlalchemy import select

    from core.jobs import lifecycle as jobs
    from storage.db import session
    from storage.tables import Job

    with session() as s:
        rows = list(s.scalars(select(Job).where(Job.status == "running", Job.host == jobs.HOST)))
    return sum(1 for j in rows if j.id != exclude and jobs.lane(j) == "heavy")


def for_job(job_id: int, asked: Optional[int] = None, *, processes: int = 1, light: bool = False) -> Choice:
    """The choice for a job process: the spec's `threads`, else LLMDEV_JOB_THREADS,
    else its share of the cores (split between its DDP processes, if any)."""
    chosen = _asked(asked, "the spec (threads)") or _asked(setting(), "LLMDEV_JOB_THREADS")
    if chosen:
        return chosen
    cores = usable_cores()
    others = neighbours()
    others["jobs"] = _running_jobs(job_id)
    if light:  # short, mostly files: one thread leaves the running jobs alone
        return Choice(1, cores, "a light job (an import, a tiny model): one thread", others, tuned=False)
    # an app or browser that is merely there costs nothing: the Tuner measures what
    # they use once the job runs and leaves them a core when they need one
    n, why = choose(cores, jobs=(1 + others["jobs"]) * max(1, processes))
    return Choice(n, cores, why, others)


def for_app() -> Choice:
    """The choice for generation inside the app process (the playground): its share
    beside the running jobs, leaving room for the browser that shows the reply."""
    cores = usable_cores()
    others = neighbours(skip=(os.getpid(),))
    others["jobs"] = _running_jobs(None)
    n, why = choose(cores, jobs=1 + others["jobs"], interactive=True)
    return Choice(n, cores, why, others)


class Tuner:
    """Keeps a running job's threads fitting what else runs: every `every_s` it
    measures how much CPU the rest of the machine used on this process's cores
    (their busy time minus this process's own: the app, a browser, other jobs)
    and, when that changed the right count for two checks in a row, moves torch
    to it between steps. An app with no page open costs nothing and leaves the
    job every core; a busy neighbour gets the cores it uses. A count set by the
    spec or LLMDEV_JOB_THREADS is kept, and so is a DDP rank's share (its
    sibling ranks would read as neighbours)."""

    SLACK = 0.5
    """Cores' worth of other CPU use that is left to share: a page redrawing now
    and then (measured: 0.15-0.3 of a core with the Training page open) costs a
    job less than giving up one of two threads (0.75x the tokens/s here)."""

    def __init__(self, choice: Choice, *, every_s: float = 5.0, processes: int = 1, log=print):
        self.choice, self.every_s, self.log = choice, every_s, log
        self.fixed = processes > 1 or not choice.tuned
        self.current = choice.torch
        self.changes: list[dict[str, Any]] = []
        self._mark = self._sample()
        self._pending: Optional[int] = None

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        per_cpu = psutil.cpu_times(percpu=True)
        try:
            mine = [per_cpu[i] for i in os.sched_getaffinity(0) if i < len(per_cpu)]
        except (AttributeError, OSError):
            mine = per_cpu
        busy = sum(t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) for t in mine)
        own = psutil.Process().cpu_times()
        return time.monotonic(), busy, own.user + own.system + own.children_user + own.children_system

    def others_load(self) -> Optional[float]:
        """Cores' worth of CPU the rest of the machine used since the last check
        (None until `every_s` has passed)."""
        if time.monotonic() - self._mark[0] < self.every_s:
            return None
        now = self._sample()
        wall = now[0] - self._mark[0]
        load = max(0.0, (now[1] - self._mark[1]) - (now[2] - self._mark[2])) / wall
        self._mark = now
        return load

    def tick(self) -> None:
        """Call between steps: cheap except once per `every_s`."""
        if self.fixed:
            return
        load = self.others_load()
        if load is None:
            return
        cores = self.choice.cores
        # whole cores the others use (other jobs included) beyond a little slack
        taken = 0 if load < self.SLACK else min(cores - 1, int(load - self.SLACK) + 1)
        want = max(1, cores - taken)
        if want == self.current:
            self._pending = None
            return
        if self._pending != want:  # once could be a blip: wait for the next check
            self._pending = want
            return
        self.log(f"torch threads: {self.current} -> {want} (the rest of the machine used {load:.2f} cores)")
        self.changes.append({"from": self.current, "to": want, "others_load": round(load, 3)})
        self.current, self._pending = want, None
        apply(want)


def apply(n: int) -> None:
    """Use `n` threads in this process: OMP/MKL's variables (torch reads them when it
    loads) and, once torch is loaded, torch itself."""
    for var in ENV:
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
