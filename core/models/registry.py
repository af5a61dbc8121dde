"""The model registry: what models exist, where their files are, who made them.

The jobs that fill a model's folder live beside it (create.py, starter.py,
importer.py) and in training/ and export/; this module only reads and writes
rows and folders, so the UI can use it without torch. Reserving, resolving and
publishing work as for data sets (core/jobs/outputs.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.access import accounts, audit
from core.access.accounts import Actor
from core.jobs import outputs
from core.jobs.outputs import folder_size
from core.spec import SpecError, check_model_name
from storage.db import data_home, session
from storage.tables import Event, Job, Model


class ModelError(ValueError):
    """A model operation that cannot be done; the message says why."""


def model_dir(model_id: int) -> Path:
    return data_home() / "models" / str(model_id)


def partial_dir(model_id: int) -> Path:
    """Where a job writes a model before it is complete (renamed on success)."""
    return data_home() / "models" / f"{model_id}.partial"


def reserve_outputs(s: Session, spec: Any) -> list[int]:
    """Create the row of the model a job will produce (status 'creating')."""
    if spec.output != "model":
        return []
    name = getattr(spec, spec.output_field)
    outputs.reserve_name(s, Model, name, spec.output_field, "model", "model_ids", lambda i: [model_dir(i), partial_dir(i)])
    source, origin = spec.model_source()
    row = Model(name=name, source=source, origin=origin, status="creating", details={}, owner_id=s.info.get("owner_id"))
    s.add(row)
    s.flush()
    return [row.id]


def resolve_inputs(s: Session, spec: Any) -> list[int]:
    """Ids of the models a job reads: the fields named in its `input_models`
    (e.g. the model and a judge model), each a name or an id."""
    ids = []
    for field_name in spec.input_models:
        value = getattr(spec, field_name)
        for ref in value if isinstance(value, list) else [value]:
            ref = str(ref or "").strip()
            if ref:
                ids.append(outputs.resolve(s, Model, ref, field_name, "model", "models").id)
    return ids


def link_job(s: Session, model_ids: list[int], job_id: int) -> None:
    for row in s.scalars(select(Model).where(Model.id.in_(model_ids), Model.status == "creating")):
        row.job_id = job_id


def settle_outputs(s: Session, job: Job) -> None:
    """After a job ends: its unfinished output models become errors (failed, lost)
    or disappear (cancelled, paused); partial folders are removed either way."""
    for row in s.scalars(select(Model).where(Model.job_id == job.id, Model.status == "creating")):
        shutil.rmtree(partial_dir(row.id), ignore_errors=True)
        if job.status in ("cancelled", "paused"):
            shutil.rmtree(model_dir(row.id), ignore_errors=True)
            s.delete(row)
        elif job.status == "succeeded":  # the job forgot to publish it: say so
            row.status, row.error = "error", "the job ended without saving the model"
        else:
            row.status, row.error = "error", f"job {job.id} {job.error_class or 'failed'}: {job.error}"


def publish(model_id: int, facts: dict[str, Any]) -> None:
    """Move a finished model folder into place and record its facts, only while
    its job still runs (else `Superseded`)."""
    src = partial_dir(model_id)
    with session() as s:
        row = s.get(Model, model_id)
        job_id = row.job_id if row is not None else None
    facts = dict(facts, size_bytes=folder_size(src) if src.is_dir() else None, error=None)
    outputs.publish(Model, model_id, job_id or 0, facts, src, model_dir(model_id), lambda r: f"Model '{r.name}' is ready", model_id=model_id)


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
        row = outputs.find(s, Model, ref)
    if row is None:
        raise ModelError(f"there is no model with id or name {ref!r} (see: python -m core models list)")
    return row


def is_reward_model(row: Model) -> bool:
    """A reward model scores (prompt, answer) pairs with one number (a
    sequence-classification head); it does not generate."""
    return (row.details or {}).get("task") == "reward"


def active_jobs_using(model_id: int) -> list[Job]:
    """Queued and running jobs that read or write the model, or one of its adapters
    (an adapter is loaded on its base)."""
    with session() as s:
        active = outputs.active_jobs(s)
        adapters = set(s.scalars(select(Model.id).where(Model.parent_id == model_id, Model.source == "adapter")).all())
    ids = {model_id} | adapters
    return [j for j in active if ids & set(j.model_ids or [])]


def display_status(row: Model, active: Optional[list[Job]] = None) -> str:
    """What a user reads: available, creating, training (a model a training job
    is making), error, or the `busy` label of an active job that reads it."""
    from core.kinds import traits

    using = [j for j in (active if active is not None else active_jobs_using(row.id)) if row.id in (j.model_ids or [])]
    if row.status == "creating":
        return "training" if any(traits(j.kind).trains for j in using) else "creating"
    if row.status != "available" or not using:
        return row.status
    return traits(using[0].kind).busy


def model_dict(row: Model, active: Optional[list[Job]] = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "status": display_status(row, active),
        "source": row.source,
        "owner": accounts.owner_of(row.owner_id),
        "owner_id": row.owner_id,
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
        active = outputs.active_jobs(s)
    return [model_dict(row, active) for row in list_models()]


def lineage(row: Model) -> list[str]:
    """Where a model came from, oldest first, in words."""
    chain, seen = [], set()
    current: Optional[Model] = row
    while current is not None and current.id not in seen:
        seen.add(current.id)
        made = f" by job {current.job_id}" if current.job_id else ""
        whose = f", {accounts.owner_name(current.owner_id)}'s" if current.owner_id is not None else ""
        chain.append(f"{current.name} ({current.source}: {current.origin or '-'}{whose}){made}")
        # an adapter that trained on from another adapter: that one, then its base
        started = ((current.details or {}).get("started_from") or {}).get("id")
        previous = started if started and get_or_none(started) is not None else current.parent_id
        current = get(previous) if previous else None
    return list(reversed(chain))


def count() -> int:
    with session() as s:
        return s.scalar(select(func.count()).select_from(Model)) or 0


# --- changing -----------------------------------------------------------------


def rename(model_id: int, new_name: str, by: Optional[Actor] = None) -> Model:
    """Rename a model, for `by` (its owner or an admin; default: the machine's owner)."""
    new_name = check_model_name(new_name)
    by = by or accounts.terminal()
    with session() as s:
        row = s.get(Model, model_id)
        if row is None:
            raise ModelError(f"there is no model {model_id}")
        accounts.require_change(by, row.owner_id, f"model {model_id} '{row.name}'", "rename")
        if outputs.name_taken(s, Model, new_name, exclude_id=model_id):
            raise SpecError("name", f"a model named {new_name!r} already exists: choose another name")
        old, row.name = row.name, new_name
        s.add(Event(message=f"Model '{old}' renamed to '{new_name}'", model_id=model_id))
    audit.record(by, "rename", f"model {model_id} '{old}'", f"now '{new_name}'")
    return row


def delete(model_id: int, by: Optional[Actor] = None) -> None:
    """Delete a model's row and files, for `by` (its owner or an admin; default: the
    machine's owner); refused while a job uses it."""
    by = by or accounts.terminal()
    row = get(model_id)
    accounts.require_change(by, row.owner_id, f"model {model_id} '{row.name}'", "delete")
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
    audit.record(by, "delete", f"model {model_id} '{name}'")
