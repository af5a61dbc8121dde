"""Is a job's worker process still alive? Through psutil, so it reads the same on
Linux, macOS and Windows (no hand-read /proc).

Three traps, each handled here and tested in tests/test_jobs.py:
- a zombie (exited, not yet reaped by its parent) still answers `kill(pid, 0)`:
  it is gone;
- a PID can be reused by another process after the worker died: only a
  process whose command line is `core.worker <this job id>` counts;
- right after `Popen` returns, the child may still be in exec, with an empty
  command line: too young to tell (None: trust the heartbeat). An empty command
  line on an older process is one being torn down: gone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import psutil

YOUNG_S = 5.0  # an unidentifiable process younger than this may still be in exec
PF_EXITING = 0x4  # Linux /proc/<pid>/stat flags: the process is exiting


def worker_alive(pid: Optional[int], job_id: int) -> Optional[bool]:
    """True if `pid` is a live worker (supervisor or job process) of this job on
    this machine, False if it is gone, None when it cannot be identified yet."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD) or _exiting(pid):
            return False
        cmdline = proc.cmdline()
        age = time.time() - proc.create_time()
    except psutil.NoSuchProcess:  # ZombieProcess is one too
        return False
    except psutil.AccessDenied:
        return None  # not ours to read (hidden /proc, another user): the heartbeat decides
    if not any(cmdline):
        return None if age < YOUNG_S else False
    words = " ".join(cmdline)
    return "core.worker" in words and str(job_id) in cmdline


def _exiting(pid: int) -> bool:
    """Linux only, where the kernel says so: the process is exiting (its command
    line is already empty, but it is not a zombie yet). Elsewhere: False, and the
    age rule above decides."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return bool(int(stat.rsplit(")", 1)[1].split()[6]) & PF_EXITING)  # field 9: flags
