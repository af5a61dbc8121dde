"""What jobs read and make, the same way for every registry (models, data sets).

A job's output gets its row at submit (status 'creating', so two jobs cannot
take one name), is written into a `<id>.partial` folder, and is published
(moved into place, status 'available') only while its job still runs; when the
job ends otherwise, the registry settles it (see models/registry.py and
data/registry.py). An input is a name or an id that must be available.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.spec import SpecError
from storage.db import data_home, session, write_lock
from storage.tables import Event, Job

ACTIVE = ("queued", "running")


class Superseded(RuntimeError):
    """The job that made this output is no longer running (cancelled, lost)."""


def find(s: Session, table: type, ref: str) -> Optional[Any]:
    """A row by id or by name (names are case-insensitive)."""
    ref = str(ref).strip()
    row = s.get(table, int(ref)) if ref.isdigit() else None
    if row is None:
        row = s.scalars(select(table).where(func.lower(table.name) == ref.lower())).first()
    return row


def name_taken(s: Session, table: type, name: str, exclude_id: Optional[int] = None) -> bool:
    q = select(table.id).where(func.lower(table.name) == name.lower())
    if exclude_id is not None:
        q = q.where(table.id != exclude_id)
    return s.scalars(q).first() is not None


def active_jobs(s: Session) -> list[Job]:
    return list(s.scalars(select(Job).where(Job.status.in_(ACTIVE))).all())


def reserve_name(s: Session, table: type, name: str, field_name: str, what: str, ids: str, folders: Callable[[int], list[Path]]) -> None:
    """Make way for a new row named `name`: a failed namesake that no active job
    still uses gives its name up (row and files), when whoever submits (`s.info`,
    set by core.jobs.lifecycle.submit) may change it; a live one refuses it."""
    from core.access import accounts

    for row in s.scalars(select(table).where(func.lower(table.name) == name.lower(), table.status == "error")):
        if any(row.id in (getattr(j, ids) or []) for j in active_jobs(s)):
            continue
        by = s.info.get("actor")
        if by is not None and not accounts.may_change(by, row.owner_id):
            raise SpecError(field_name, f"a failed {what} named {name!r} belongs to {accounts.owner_name(row.owner_id)}: choose another name")
        s.add(Event(message=f"Failed {what} '{row.name}' replaced by a new attempt"))
        for folder in folders(row.id):
            shutil.rmtree(folder, ignore_errors=True)
        s.delete(row)
    s.flush()
    if name_taken(s, table, name):
        article = "an" if what[0] in "aeiou" else "a"
        raise SpecError(field_name, f"{article} {what} named {name!r} already exists: choose another name")


def resolve(s: Session, table: type, ref: str, field_name: str, what: str, listing: str) -> Any:
    """An input of a job: the available row `ref` names, else a SpecError."""
    row = find(s, table, ref)
    if row is None:
        raise SpecError(field_name, f"there is no {what} {ref!r} (see: python -m core {listing} list)")
    if row.status != "available":
        raise SpecError(field_name, f"{what} '{row.name}' is {row.status}, not available")
    return row


def publish(
    table: type, row_id: int, job_id: int, facts: dict[str, Any], src: Path, dst: Path, message: Callable[[Any], str], **event: Any
) -> None:
    """Move a finished folder into place and record its facts, only if the row is
    still 'creating' and its job still running (one transaction, under the write
    lock, so no job state change can interleave: see jobs.lifecycle.finish)."""
    with session() as s:
        write_lock(s)
        row = s.get(table, row_id)
        job = s.get(Job, job_id)
        if row is None or row.status != "creating" or job is None or job.status != "running":
            shutil.rmtree(src, ignore_errors=True)
            raise Superseded(f"{table.__tablename__[:-1]} {row_id}: its job ended before it was saved")
        for key, value in facts.items():
            setattr(row, key, value)
        row.path = str(dst.relative_to(data_home()))
        row.status = "available"
        s.add(Event(message=message(row), job_id=job_id, **event))
        s.flush()  # the row is written (and locked) before the folder moves
        if dst.exists():
            shutil.rmtree(dst)
        src.rename(dst)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
