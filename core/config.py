"""Settings, read from environment variables (the UI copies `st.secrets` into them).

LLMDEV_HOME                  data home (default ./workspace)
DATABASE_URL                 PostgreSQL instead of SQLite under the data home
LLMDEV_MAX_CONCURRENT_JOBS   heavy jobs (training, evaluations) running at once (default 1)
LLMDEV_MAX_LIGHT_JOBS        light jobs (imports, tiny models) running beside them (default 1)
LLMDEV_CANCEL_GRACE_S        seconds a cancelled job gets before SIGKILL (default 20)
LLMDEV_PAUSE_GRACE_S         seconds a paused job gets to write its checkpoint (default 300)
LLMDEV_AUTO_STARTER          convert the starter model on first launch (default 1)
LLMDEV_JOB_THREADS           torch threads per job (default 0: chosen from the free cores, core/threads.py)
LLMDEV_RAY_ADDRESS           a Ray cluster's dashboard address for jobs with runner ray (or set on the Jobs page)
LLMDEV_RAY_START_TIMEOUT_S   seconds a Ray job may wait for the cluster to start it (default 300)
LLMDEV_MAX_QUEUED_PER_USER   jobs a member may have waiting at once (default 5; admins: no limit)
LLMDEV_MAX_SERVICES_PER_USER services (servers, deployments) a member may run at once (default 2)
LLMDEV_ALLOWED_PATHS         folders app visitors may name files under (core/access/paths.py)
LLMDEV_SESSION_HOURS         how long a sign-in lasts (default 12)
LLMDEV_USER_CODE_CPU_S       CPU seconds per call of a user's code (default 60; core/access/sandbox.py)
LLMDEV_USER_CODE_MEMORY_MB   memory of a user's code's process (default 4096)
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy.exc import IntegrityError

from storage.db import session
from storage.tables import Setting

# A job on another host (shared PostgreSQL) is lost when its heartbeat is this old.
LOST_AFTER_S = 60.0
# The worker writes a heartbeat (and checks for a cancel request) this often.
HEARTBEAT_S = 2.0
SECRET_KEYS = (
    "LLMDEV_HOME",
    "DATABASE_URL",
    "LLMDEV_MAX_CONCURRENT_JOBS",
    "LLMDEV_MAX_LIGHT_JOBS",
    "LLMDEV_CANCEL_GRACE_S",
    "LLMDEV_PAUSE_GRACE_S",
    "LLMDEV_AUTO_STARTER",
    "LLMDEV_JOB_THREADS",
    "LLMDEV_RAY_ADDRESS",
    "LLMDEV_RAY_START_TIMEOUT_S",
    "LLMDEV_MAX_QUEUED_PER_USER",
    "LLMDEV_MAX_SERVICES_PER_USER",
    "LLMDEV_ALLOWED_PATHS",
    "LLMDEV_SESSION_HOURS",
    "LLMDEV_USER_CODE_CPU_S",
    "LLMDEV_USER_CODE_MEMORY_MB",
)


def _number(name: str, default: float, low: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None
    if value < low:
        raise ValueError(f"{name}={raw!r}: must be at least {low:g}")
    return value


def max_concurrent_jobs() -> int:
    return int(_number("LLMDEV_MAX_CONCURRENT_JOBS", 1, 1))


def max_light_jobs() -> int:
    """Light jobs (imports, tiny models, short evaluations) running at once beside
    the heavy ones; 0 puts them in the heavy jobs' queue."""
    return int(_number("LLMDEV_MAX_LIGHT_JOBS", 1, 0))


def cancel_grace_s() -> float:
    return _number("LLMDEV_CANCEL_GRACE_S", 20.0, 0)


def pause_grace_s() -> float:
    """A pause saves a checkpoint before it stops: it may take longer than a cancel."""
    return max(cancel_grace_s(), _number("LLMDEV_PAUSE_GRACE_S", 300.0, 0))


def max_queued_per_user() -> int:
    return int(_number("LLMDEV_MAX_QUEUED_PER_USER", 5, 1))


def max_services_per_user() -> int:
    return int(_number("LLMDEV_MAX_SERVICES_PER_USER", 2, 0))


def check() -> None:
    """Raise ValueError naming the variable if a setting is unusable."""
    max_concurrent_jobs()
    max_light_jobs()
    cancel_grace_s()
    max_queued_per_user()
    max_services_per_user()
    from core.threads import setting

    setting()


def auto_starter() -> bool:
    return os.environ.get("LLMDEV_AUTO_STARTER", "1").strip().lower() not in ("0", "false", "no", "off")


def get_setting(key: str, default: Any = None) -> Any:
    """A small fact kept in the database (survives restarts, shared by processes)."""
    with session() as s:
        row = s.get(Setting, key)
    return default if row is None else row.value


def claim_setting(key: str, value: Any) -> bool:
    """Set `key` only if nobody has: True for the one process that wins."""
    try:
        with session() as s:
            s.add(Setting(key=key, value=value))
    except IntegrityError:
        return False
    return True
