"""The export registry: ONNX graphs and Triton repositories made from models.

An export job reserves its row at submit (status 'creating': the name is
taken), writes into `exports/<id>.partial` and publishes (moves the folder into
place, status 'available') only while its job still runs, as models and data
sets do (core/jobs/outputs.py). An export whose job ends otherwise leaves
nothing: its row and folders are removed, and the job says why. A merged model
is a model (models/registry.py); the Export page lists it beside these.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.access import accounts, audit
from core.access.accounts import Actor
from core.jobs import outputs
from core.jobs.outputs import folder_size
from storage.db import data_home, session
from storage.tables import Event, Export, Job, Model


class ExportError(ValueError):
    """An export operation that cannot be done; the message says why."""


def export_dir(export_id: int) -> Path:
    return data_home() / "exports" / str(export_id)


def partial_dir(export_id: int) -> Path:
    """Where a job writes an export before it is complete (renamed on success)."""
    return data_home() / "exports" / f"{export_id}.partial"


# --- jobs that make exports ---------------------------------------------------------------


def reserve_outputs(s: Session, spec: Any) -> list[int]:
    """The row of the export a job will make (status 'creating')."""
    if spec.output != "export":
        return []
    name = getattr(spec, spec.output_field)
    outputs.reserve_name(s, Export, name, spec.output_field, "export", "model_ids", lambda i: [export_dir(i), partial_dir(i)])
    row = Export(name=name, format=spec.export_format, status="creating", settings=spec.to_dict(), verification={}, details={}, owner_id=s.info.get("owner_id"))
    s.add(row)
    s.flush()
    return [row.id]


def link_job(s: Session, export_ids: list[int], job_id: int, model_ids: list[int]) -> None:
    for row in s.scalars(select(Export).where(Export.id.in_(export_ids))):
        row.job_id = job_id
        row.model_id = model_ids[0] if model_ids else None


def for_job(job_id: int) -> Export:
    """The export a running job makes."""
    with session() as s:
        row = s.scalars(select(Export).where(Export.job_id == job_id)).first()
    if row is None:
        raise ExportError(f"job {job_id} makes no export")
    return row


def settle_outputs(s: Session, job: Job) -> None:
    """After an export job ends without publishing: nothing is left registered."""
    for row in s.scalars(select(Export).where(Export.job_id == job.id, Export.status == "creating")):
        shutil.rmtree(partial_dir(row.id), ignore_errors=True)
        shutil.rmtree(export_dir(row.id), ignore_errors=True)
        s.delete(row)


def publish(export_id: int, job_id: int, facts: dict[str, Any]) -> None:
    """Move a finished export into place with its facts, only while its job still
    runs (else `Superseded`)."""
    src = partial_dir(export_id)
    facts = dict(facts, size_bytes=folder_size(src))
    outputs.publish(Export, export_id, job_id, facts, src, export_dir(export_id), lambda r: f"Export '{r.name}' ({r.format}) is ready")


# --- reading ------------------------------------------------------------------------------


def find_available(ref: str, fmt: str, other_format: str) -> Export:
    """An available export of format `fmt` by name or id; ExportError otherwise
    (`other_format` tells what to do with an export of another format)."""
    row = find(ref)
    if row.format != fmt:
        raise ExportError(f"'{row.name}' is {'an' if row.format[0] in 'aeiou' else 'a'} {row.format} export: {other_format}")
    if row.status != "available":
        raise ExportError(f"export '{row.name}' is {row.status}")
    return row


def list_exports() -> list[Export]:
    with session() as s:
        return list(s.scalars(select(Export).order_by(Export.id)).all())


def find(ref: str) -> Export:
    with session() as s:
        row = outputs.find(s, Export, ref)
    if row is None:
        raise ExportError(f"there is no export with id or name {ref!r} (see: python -m core export list)")
    return row


def export_dict(row: Export) -> dict[str, Any]:
    with session() as s:
        model = s.get(Model, row.model_id) if row.model_id else None
    return {
        "id": row.id,
        "name": row.name,
        "format": row.format,
        "status": row.status,
        "model_id": row.model_id,
        "owner": accounts.owner_of(row.owner_id),
        "owner_id": row.owner_id,
        "model": model.name if model is not None else (row.details or {}).get("model"),
        "path": str(data_home() / row.path) if row.path else None,
        "size_bytes": row.size_bytes,
        "settings": row.settings or {},
        "verification": row.verification or {},
        "details": row.details or {},
        "job_id": row.job_id,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }


def within_tolerance(row: Export) -> bool:
    """Every graph of the export verified within its tolerance."""
    checks = row.verification or {}
    return bool(checks) and all(v.get("ok") for v in checks.values())


def archive(row: Export) -> bytes:
    """The export's folder as a .tar (weights hardly compress: plain tar is as
    small as gzip and many times faster), its files under the export's name."""
    if row.status != "available" or not row.path:
        raise ExportError(f"export '{row.name}' is {row.status}: nothing to download yet")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(data_home() / row.path, arcname=row.name)
    return buffer.getvalue()


# --- changing -----------------------------------------------------------------------------


def delete(export_id: int, by: Optional[Actor] = None) -> None:
    """Delete an export's row and files, for `by` (its owner or an admin; default:
    the machine's owner); refused while it is made or served."""
    by = by or accounts.terminal()
    with session() as s:
        row = s.get(Export, export_id)
        if row is None:
            raise ExportError(f"there is no export {export_id}")
        accounts.require_change(by, row.owner_id, f"export {export_id} '{row.name}'", "delete")
        if row.status == "creating":
            raise ExportError(f"export '{row.name}' is being made by job {row.job_id}: cancel it first")
        for job in readers(s, row):
            raise ExportError(f"export '{row.name}' is in use by job {job.id} ({job.title}): stop it first")
        name = row.name
        s.delete(row)
        s.add(Event(message=f"Export '{name}' deleted"))
    shutil.rmtree(export_dir(export_id), ignore_errors=True)
    audit.record(by, "delete", f"export {export_id} '{name}'")


def readers(s: Session, row: Export) -> list[Job]:
    """Active jobs that read this export (a server serving it): the fields their
    kind names in `input_exports`, by name or id."""
    from core.kinds import traits

    found = []
    for job in outputs.active_jobs(s):
        values = [(job.spec or {}).get(name) for name in traits(job.kind).input_exports]
        refs = [str(ref) for value in values for ref in (value if isinstance(value, list) else [value]) if ref]
        if row.name in refs or str(row.id) in refs:
            found.append(job)
    return found


def get_or_none(export_id: int) -> Optional[Export]:
    with session() as s:
        return s.get(Export, export_id)
