"""What a job function gets besides its spec (`Run`), and how it says it stopped.

    def run_something(spec, run: Run) -> dict:
        run.progress(0, total, "loading")   # step of total done, and what now
        run.check_cancel()                  # between steps: raises Cancelled
        run.metrics(step, {"loss": 1.23})
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Optional


class Cancelled(Exception):
    """The job stopped because it was asked to (SIGTERM or a cancel request).
    `result` says what it left behind (a paused training run: its checkpoint)."""

    def __init__(self, message: str = "cancelled", result: Optional[dict] = None):
        super().__init__(message)
        self.message, self.result = message, result


class BadInput(ValueError):
    """The job's input turned out to be unusable; the message says what to fix."""


class Run:
    """What a job function gets besides its spec: its folder and its reporting."""

    def __init__(self, job_id: int, stop: threading.Event, tuner: Any = None):
        import os

        from core.jobs import lifecycle as jobs

        self.job_id = job_id
        # under torchrun only rank 0 reports; the other ranks just train
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = self.rank == 0
        self.dir: Path = jobs.run_dir(job_id)
        self.stop = stop
        job = jobs.get(job_id)
        self.model_ids: list[int] = list(job.model_ids or [])
        self.dataset_ids: list[int] = list(job.dataset_ids or [])
        self._last_progress = 0.0
        self.tuner = tuner
        """core.threads.Tuner: keeps torch's threads fitting the machine between steps."""

    @property
    def output_model_id(self) -> int:
        return self.model_ids[0]

    def stop_requested(self) -> Optional[str]:
        """The stop mode if a stop was asked for (by signal or in the database), else None.
        Under DDP the ranks get no signal: rank 0 reads the database."""
        from core.jobs import lifecycle as jobs

        if not self.stop.is_set() and self.world_size > 1 and self.is_main:
            if jobs.get(self.job_id).cancel_requested_at is not None:
                self.stop.set()
        return self.stop_mode() if self.stop.is_set() else None

    def stop_mode(self) -> str:
        """"pause" (stop with a checkpoint) or "cancel" (stop, keep nothing)."""
        from core.jobs import lifecycle as jobs

        return jobs.get(self.job_id).stop_mode or "cancel"

    def check_cancel(self) -> None:
        """Raise Cancelled if a stop was asked for; call it between steps."""
        if self.stop.is_set():
            raise Cancelled()

    def progress(self, step: int, total: Optional[int] = None, message: str = "", force: bool = False) -> None:
        """Record progress: `step` of `total` units done, and what is happening now."""
        from sqlalchemy import update

        from storage.db import db_now, session
        from storage.tables import Job

        if self.tuner is not None:
            self.tuner.tick()  # every rank: each has its own threads
        if not self.is_main:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < 0.25 and (total is None or step < total):
            return
        self._last_progress = now
        values: dict[str, Any] = dict(progress_step=step, heartbeat_at=db_now())
        if total is not None:
            values["progress_total"] = total
        if message:
            values["progress_message"] = message
            print(f"[{step}/{total if total is not None else '?'}] {message}", flush=True)
        with session() as s:
            s.execute(update(Job).where(Job.id == self.job_id, Job.status == "running").values(**values))

    def publish(self, facts: dict[str, Any]) -> None:
        """Show facts while the job runs (a service's endpoint, as soon as it
        listens): merged into the job's result, which its end replaces."""
        from sqlalchemy import update

        from core.jobs import lifecycle as jobs
        from storage.db import session
        from storage.tables import Job

        if not self.is_main:
            return
        merged = {**(jobs.get(self.job_id).result or {}), **facts}
        with session() as s:
            s.execute(update(Job).where(Job.id == self.job_id, Job.status == "running").values(result=merged))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Record per-step metrics (loss, lr, tokens/s, ...)."""
        from storage.db import session
        from storage.tables import Metric

        if not self.is_main:
            return
        with session() as s:
            s.add_all(
                Metric(job_id=self.job_id, step=step, name=name, value=float(value))
                for name, value in values.items()
                if value is not None
            )


def store_samples(job_id: int, step: Optional[int], samples: list[dict[str, Any]]) -> None:
    """Keep what a job saw and made, one row each: an evaluation's samples (prompt,
    reference, output, scores) at a checkpoint's step, or an RL run's rollouts at
    the step they trained. `step` None: the model itself."""
    from core.format import jsonable
    from storage.db import session
    from storage.tables import EvalSample

    with session() as s:
        s.add_all(
            EvalSample(
                job_id=job_id,
                step=step,
                idx=sample["idx"],
                prompt=jsonable(sample.get("prompt", "")),
                reference=jsonable(sample.get("reference")),
                output=jsonable(sample.get("output")),
                scores=jsonable(sample.get("scores", {})),
                extra=jsonable(sample.get("extra", {})),
            )
            for sample in samples
        )
