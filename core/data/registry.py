"""The data set registry: what data sets exist, where their files are.

Reading and checking files is data/files.py; the import job is
data/importer.py. Reserving, resolving and publishing work as for models
(core/jobs/outputs.py): the same errors for a taken name or an output whose
job ended, the same rule for a failed namesake that a job still uses.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.access import accounts, audit
from core.access.accounts import Actor
from core.data.files import DatasetError
from core.jobs import outputs
from core.spec import SpecError, check_model_name
from storage.db import data_home, session
from storage.tables import Dataset, Event, Job


def dataset_dir(dataset_id: int) -> Path:
    return data_home() / "datasets" / str(dataset_id)


def partial_dir(dataset_id: int) -> Path:
    """Where an import writes a data set before it is complete (renamed on success)."""
    return data_home() / "datasets" / f"{dataset_id}.partial"


# --- jobs that make or read data sets -----------------------------------------------------


def reserve_outputs(s: Session, spec: Any) -> list[int]:
    """The row of the data set a job will produce (status 'creating')."""
    if spec.output != "dataset":
        return []
    name = getattr(spec, spec.output_field)
    outputs.reserve_name(s, Dataset, name, spec.output_field, "data set", "dataset_ids", lambda i: [dataset_dir(i), partial_dir(i)])
    row = Dataset(name=name, format=spec.format or "auto", status="creating", origin=spec.path, details={}, owner_id=s.info.get("owner_id"))
    s.add(row)
    s.flush()
    return [row.id]


def resolve_inputs(s: Session, spec: Any) -> list[int]:
    """Ids of the data sets a job reads (the fields in its `input_datasets`), each
    of a format the kind accepts."""
    ids = []
    for field_name in spec.input_datasets:
        ref = str(getattr(spec, field_name) or "").strip()
        if not ref:
            continue
        row = outputs.resolve(s, Dataset, ref, field_name, "data set", "data")
        accepted = spec.dataset_formats
        if accepted and row.format not in accepted:
            raise SpecError(field_name, f"'{row.name}' is {row.format} data; {spec.kind} needs {' or '.join(accepted)} data")
        ids.append(row.id)
    return ids


def settle_outputs(s: Session, job: Job) -> None:
    """After an import ends badly, nothing is left registered."""
    if job.status == "succeeded":
        return
    for row in s.scalars(select(Dataset).where(Dataset.id.in_(job.dataset_ids or []), Dataset.status == "creating")):
        shutil.rmtree(partial_dir(row.id), ignore_errors=True)
        shutil.rmtree(dataset_dir(row.id), ignore_errors=True)
        s.delete(row)


def publish(dataset_id: int, job_id: int, facts: dict[str, Any]) -> None:
    """Move the saved data set into place, only while its job still runs (else `Superseded`)."""
    outputs.publish(
        Dataset, dataset_id, job_id, facts, partial_dir(dataset_id), dataset_dir(dataset_id),
        lambda r: f"Data set '{r.name}' imported: {r.num_rows} rows ({r.format})",
    )


# --- reading ------------------------------------------------------------------------------


def count() -> int:
    with session() as s:
        return s.scalar(select(func.count()).select_from(Dataset)) or 0


def list_datasets() -> list[Dataset]:
    with session() as s:
        return list(s.scalars(select(Dataset).order_by(Dataset.id)).all())


def get(dataset_id: int) -> Dataset:
    with session() as s:
        row = s.get(Dataset, dataset_id)
    if row is None:
        raise DatasetError(f"there is no data set {dataset_id}")
    return row


def find(ref: str) -> Dataset:
    """A data set by id or by name."""
    with session() as s:
        row = outputs.find(s, Dataset, ref)
    if row is None:
        raise DatasetError(f"there is no data set with id or name {str(ref).strip()!r} (see: python -m core data list)")
    return row


def dataset_dict(row: Dataset) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "format": row.format,
        "status": row.status,
        "origin": row.origin,
        "owner": accounts.owner_of(row.owner_id),
        "owner_id": row.owner_id,
        "num_rows": row.num_rows,
        "fingerprint": row.fingerprint,
        "path": str(data_home() / row.path) if row.path else None,
        "details": row.details or {},
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }


def load(row: Dataset):
    """The stored DatasetDict (train, and validation when there is one)."""
    from datasets import load_from_disk

    if row.status != "available" or not row.path:
        raise DatasetError(f"data set '{row.name}' is {row.status}, not available")
    return load_from_disk(str(data_home() / row.path))


def active_jobs_using(dataset_id: int) -> list[Job]:
    with session() as s:
        active = outputs.active_jobs(s)
    return [j for j in active if dataset_id in (j.dataset_ids or [])]


# --- changing -----------------------------------------------------------------------------


def rename(dataset_id: int, new_name: str, by: Optional[Actor] = None) -> Dataset:
    """Rename a data set, for `by` (its owner or an admin; default: the machine's owner)."""
    new_name = check_model_name(new_name)
    by = by or accounts.terminal()
    with session() as s:
        row = s.get(Dataset, dataset_id)
        if row is None:
            raise DatasetError(f"there is no data set {dataset_id}")
        accounts.require_change(by, row.owner_id, f"data set {dataset_id} '{row.name}'", "rename")
        if outputs.name_taken(s, Dataset, new_name, exclude_id=dataset_id):
            raise SpecError("name", f"a data set named {new_name!r} already exists: choose another name")
        old, row.name = row.name, new_name
        s.add(Event(message=f"Data set '{old}' renamed to '{new_name}'"))
    audit.record(by, "rename", f"data set {dataset_id} '{old}'", f"now '{new_name}'")
    return row


def delete(dataset_id: int, by: Optional[Actor] = None) -> None:
    """Delete a data set's row and files, for `by` (its owner or an admin; default:
    the machine's owner); refused while a job uses it."""
    by = by or accounts.terminal()
    row = get(dataset_id)
    accounts.require_change(by, row.owner_id, f"data set {dataset_id} '{row.name}'", "delete")
    users = [j.id for j in active_jobs_using(dataset_id)]
    if users:
        raise DatasetError(f"data set {dataset_id} is in use by job {', '.join(map(str, users))}: cancel it or wait for it to end")
    with session() as s:
        row = s.get(Dataset, dataset_id)
        if row is None:
            raise DatasetError(f"there is no data set {dataset_id}")
        s.add(Event(message=f"Data set '{row.name}' deleted"))
        s.delete(row)
    shutil.rmtree(dataset_dir(dataset_id), ignore_errors=True)
    shutil.rmtree(partial_dir(dataset_id), ignore_errors=True)
    audit.record(by, "delete", f"data set {dataset_id} '{row.name}'")
