"""Data sets: read a file, detect its format, validate every row, store it.

Formats and the columns a data set has once imported (canonical names):

    text         text
    instruction  prompt, response, system          (Alpaca instruction/input/output mapped)
    chat         messages: [{role, content}, ...]  (roles: system, user, assistant)
    preference   prompt, chosen, rejected
    prompt       prompt (+ answer, when given: a reference for rewards)

`read_file` + `normalize` are pure functions: the page preview, the CLI's
up-front check and the import job all use them, so they report the same bad
lines. Line numbers are the file's own (JSONL and CSV lines; for JSON arrays
and Parquet, the record number).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import func, select

from storage.db import data_home, session
from storage.tables import Dataset, Event, Job

FORMATS = ("text", "instruction", "chat", "preference", "prompt")
SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"
# the sample data sets shipped in assets/samples: file -> (suggested name, format)
SAMPLE_FILES = {
    "instructions.jsonl": ("sample-instructions", "instruction"),
    "chat.jsonl": ("sample-chat", "chat"),
    "preferences.jsonl": ("sample-preferences", "preference"),
    "prompts.jsonl": ("sample-prompts", "prompt"),
    "text.jsonl": ("sample-text", "text"),
}
EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
# Explicit limits: a bigger file belongs in a streaming pipeline, not an upload.
MAX_FILE_BYTES = 512 * 2**20
MAX_ROWS = 2_000_000
MAX_PROBLEMS_SHOWN = 20
ROLES = ("system", "user", "assistant")

# canonical field -> accepted source column names, in order of preference
ALIASES: dict[str, tuple[str, ...]] = {
    "text": ("text", "content", "document"),
    "prompt": ("prompt", "instruction", "question", "query"),
    "input": ("input", "context"),
    "response": ("response", "output", "completion", "answer"),
    "system": ("system", "system_prompt"),
    "messages": ("messages", "conversations", "conversation"),
    "chosen": ("chosen",),
    "rejected": ("rejected",),
    "answer": ("answer", "solution", "reference"),
}
REQUIRED = {
    "text": ("text",),
    "instruction": ("prompt", "response"),
    "chat": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt": ("prompt",),
}
OPTIONAL = {"instruction": ("input", "system"), "prompt": ("answer",)}


@dataclass
class Problem:
    line: int
    message: str
    unit: str = "line"  # "record" for JSON arrays and Parquet, whose rows have no line

    def __str__(self) -> str:
        return f"{self.unit} {self.line}: {self.message}"


@dataclass
class Parsed:
    """What a file holds: records with their line numbers, and what could not be read."""

    records: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    unit: str = "line"


@dataclass
class Normalized:
    format: str
    mapping: dict[str, str]
    rows: list[dict[str, Any]]
    lines: list[int]
    problems: list[Problem]

    def report(self, limit: int = MAX_PROBLEMS_SHOWN) -> str:
        shown = "\n".join(str(p) for p in self.problems[:limit])
        more = len(self.problems) - limit
        return shown + (f"\n... and {more} more" if more > 0 else "")


class DatasetError(ValueError):
    """A data set operation that cannot be done; the message says why."""


# --- reading ------------------------------------------------------------------------


def read_file(path: Path) -> Parsed:
    """Parse a JSONL/JSON/CSV/Parquet file into records (dicts)."""
    path = Path(path)
    if path.suffix.lower() not in EXTENSIONS:
        raise DatasetError(f"{path.name}: unsupported file type; use one of {', '.join(EXTENSIONS)}")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DatasetError(f"{path.name}: {size / 2**20:.0f} MB is over the {MAX_FILE_BYTES // 2**20} MB limit")
    suffix = path.suffix.lower()
    parsed = Parsed()
    if suffix in (".jsonl", ".ndjson"):
        with open(path, "rb") as fh:
            for n, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    parsed.problems.append(Problem(n, f"undecodable bytes (not UTF-8) at column {exc.start + 1}"))
                    continue
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    parsed.problems.append(Problem(n, f"invalid JSON: {exc.msg} at column {exc.colno}"))
                    continue
                _add(parsed, n, obj)
    elif suffix == ".json":
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            line = path.read_bytes()[: exc.start].count(b"\n") + 1
            raise DatasetError(f"{path.name}: line {line}: undecodable bytes (not UTF-8)") from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path.name}: line {exc.lineno}: invalid JSON: {exc.msg} at column {exc.colno}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DatasetError(f"{path.name}: expected a JSON array of objects (or {{\"data\": [...]}})")
        parsed.unit = "record"
        for n, obj in enumerate(data, start=1):
            _add(parsed, n, obj)
    elif suffix == ".csv":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise DatasetError(f"{path.name}: line {line}: undecodable bytes (not UTF-8)") from None
        csv.field_size_limit(MAX_FILE_BYTES)
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            reader.fieldnames  # read the header
            while True:
                start = reader.line_num + 1  # a quoted field can span lines: report the first
                try:
                    row = next(reader)
                except StopIteration:
                    break
                if None in row:
                    parsed.problems.append(Problem(start, "more fields than the header has columns"))
                    continue
                _add(parsed, start, dict(row))
        except csv.Error as exc:
            raise DatasetError(f"{path.name}: line {reader.line_num}: {exc}") from None
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DatasetError(f"{path.name}: not a readable Parquet file ({exc})") from None
        parsed.unit = "record"
        for n, obj in enumerate(table.to_pylist(), start=1):
            _add(parsed, n, obj)
    if len(parsed.records) > MAX_ROWS:
        raise DatasetError(f"{path.name}: {len(parsed.records)} rows is over the {MAX_ROWS} row limit")
    seen: dict[str, None] = {}
    for _, rec in parsed.records:
        seen.update(dict.fromkeys(rec))
    parsed.columns = list(seen)
    return parsed


def _add(parsed: Parsed, line: int, obj: Any) -> None:
    if isinstance(obj, dict):
        parsed.records.append((line, obj))
    else:
        parsed.problems.append(Problem(line, f"expected a JSON object, got {type(obj).__name__}", parsed.unit))


# --- formats ----------------------------------------------------------------------------


def detect_format(columns: list[str]) -> str:
    """The most likely format for these columns."""
    cols = {c.lower() for c in columns}

    def has(canonical: str) -> bool:
        return any(a in cols for a in ALIASES[canonical])

    if has("messages"):
        return "chat"
    if has("chosen") and has("rejected"):
        return "preference"
    if has("prompt") and has("response"):
        return "instruction"
    if has("prompt"):
        return "prompt"
    return "text"


def default_mapping(fmt: str, columns: list[str]) -> dict[str, str]:
    """canonical field -> column of the file, for the fields the format uses."""
    by_lower = {c.lower(): c for c in columns}
    mapping = {}
    for canonical in REQUIRED[fmt] + OPTIONAL.get(fmt, ()):
        for alias in ALIASES[canonical]:
            if alias in by_lower:
                mapping[canonical] = by_lower[alias]
                break
    return mapping


def _text(value: Any, name: str) -> str:
    if value is None:
        raise ValueError(f"field '{name}' is missing")
    if not isinstance(value, str):
        raise ValueError(f"field '{name}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"field '{name}' is empty")
    return value


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)  # CSV cells hold JSON text
        except json.JSONDecodeError:
            raise ValueError(f"field '{name}' must be a list of messages") from None
    if not isinstance(value, list) or not value:
        raise ValueError(f"field '{name}' must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value, start=1):
        if not isinstance(m, dict):
            raise ValueError(f"message {i} must be an object with 'role' and 'content'")
        role = m.get("role", m.get("from"))
        role = {"human": "user", "gpt": "assistant"}.get(role, role)
        if role not in ROLES:
            raise ValueError(f"message {i}: unknown role {role!r} (use system, user or assistant)")
        content = m.get("content", m.get("value"))
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"message {i} ({role}): 'content' is missing or empty")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("the conversation has no assistant message to learn from")
    if out[-1]["role"] != "assistant":
        raise ValueError("the conversation must end with an assistant message")
    if not any(m["role"] == "user" for m in out[:-1]):
        raise ValueError("the conversation needs a user message before the last assistant message")
    return out


def _row(fmt: str, rec: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    def get(canonical: str) -> Any:
        col = mapping.get(canonical)
        return rec.get(col) if col else None

    if fmt == "text":
        return {"text": _text(get("text"), mapping.get("text", "text"))}
    if fmt == "chat":
        return {"messages": _messages(get("messages"), mapping.get("messages", "messages"))}
    if fmt == "preference":
        return {c: _text(get(c), mapping.get(c, c)) for c in ("prompt", "chosen", "rejected")}
    prompt = _text(get("prompt"), mapping.get("prompt", "prompt"))
    if fmt == "prompt":
        answer = get("answer")
        return {"prompt": prompt, "answer": "" if answer is None else str(answer)}
    extra = get("input")
    if extra is not None and not isinstance(extra, str):
        raise ValueError(f"field '{mapping['input']}' must be text, got {type(extra).__name__}")
    system = get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError(f"field '{mapping['system']}' must be text, got {type(system).__name__}")
    return {
        "prompt": f"{prompt}\n\n{extra}" if extra and extra.strip() else prompt,
        "response": _text(get("response"), mapping.get("response", "response")),
        "system": system or "",
    }


def normalize(parsed: Parsed, fmt: Optional[str] = None, mapping: Optional[dict[str, str]] = None) -> Normalized:
    """Check every record against the format; return good rows and each problem."""
    fmt = fmt or detect_format(parsed.columns)
    if fmt not in FORMATS:
        raise DatasetError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    mapping = dict(default_mapping(fmt, parsed.columns), **(mapping or {}))
    missing = [c for c in REQUIRED[fmt] if c not in mapping]
    if missing and parsed.records:
        raise DatasetError(
            f"format '{fmt}' needs column(s) {', '.join(missing)} (or an alias: "
            + "; ".join(f"{c}: {', '.join(ALIASES[c])}" for c in missing)
            + f"); the file has {', '.join(parsed.columns) or 'no columns'}"
        )
    rows, lines, problems = [], [], list(parsed.problems)
    for line, rec in parsed.records:
        try:
            rows.append(_row(fmt, rec, mapping))
            lines.append(line)
        except ValueError as exc:
            problems.append(Problem(line, str(exc), parsed.unit))
    problems.sort(key=lambda p: p.line)
    return Normalized(fmt, mapping, rows, lines, problems)


def fingerprint(rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


# --- the registry -------------------------------------------------------------------------


def dataset_dir(dataset_id: int) -> Path:
    return data_home() / "datasets" / str(dataset_id)


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
    ref = str(ref).strip()
    with session() as s:
        row = s.get(Dataset, int(ref)) if ref.isdigit() else None
        if row is None:
            row = s.scalars(select(Dataset).where(func.lower(Dataset.name) == ref.lower())).first()
    if row is None:
        raise DatasetError(f"there is no data set with id or name {ref!r} (see: python -m core data list)")
    return row


def dataset_dict(row: Dataset) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "format": row.format,
        "status": row.status,
        "origin": row.origin,
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
        active = s.scalars(select(Job).where(Job.status.in_(("queued", "running")))).all()
    return [j for j in active if dataset_id in (j.dataset_ids or [])]


def rename(dataset_id: int, new_name: str) -> Dataset:
    from core.specs import SpecError, check_model_name

    new_name = check_model_name(new_name)
    with session() as s:
        row = s.get(Dataset, dataset_id)
        if row is None:
            raise DatasetError(f"there is no data set {dataset_id}")
        taken = s.scalars(select(Dataset.id).where(func.lower(Dataset.name) == new_name.lower(), Dataset.id != dataset_id)).first()
        if taken is not None:
            raise SpecError("name", f"a data set named {new_name!r} already exists: choose another name")
        old, row.name = row.name, new_name
        s.add(Event(message=f"Data set '{old}' renamed to '{new_name}'"))
    return row


def delete(dataset_id: int) -> None:
    """Delete a data set's row and files; refused while a job uses it."""
    users = [j.id for j in active_jobs_using(dataset_id)]
    if users:
        raise DatasetError(f"data set {dataset_id} is in use by job {', '.join(map(str, users))}: cancel it or wait")
    with session() as s:
        row = s.get(Dataset, dataset_id)
        if row is None:
            raise DatasetError(f"there is no data set {dataset_id}")
        s.add(Event(message=f"Data set '{row.name}' deleted"))
        s.delete(row)
    shutil.rmtree(dataset_dir(dataset_id), ignore_errors=True)


# --- jobs that make or use data sets -------------------------------------------------------


def partial_dir(dataset_id: int) -> Path:
    return data_home() / "datasets" / f"{dataset_id}.partial"


def reserve_outputs(s, spec: Any) -> list[int]:
    """The row of the data set an import job will produce (status 'creating')."""
    from core.specs import SpecError

    if spec.kind != "import_dataset":
        return []
    for old in s.scalars(select(Dataset).where(func.lower(Dataset.name) == spec.name.lower(), Dataset.status == "error")):
        s.delete(old)  # a failed import gives its name up
    s.flush()
    if s.scalars(select(Dataset.id).where(func.lower(Dataset.name) == spec.name.lower())).first() is not None:
        raise SpecError("name", f"a data set named {spec.name!r} already exists: choose another name")
    row = Dataset(name=spec.name, format=spec.format or "auto", status="creating", origin=spec.path, details={})
    s.add(row)
    s.flush()
    return [row.id]


def resolve_inputs(s, spec: Any) -> list[int]:
    """Ids of the data sets a job reads (its `dataset` field: a name or an id)."""
    from core.specs import SpecError

    ref = getattr(spec, "dataset", None)
    if not ref:
        return []
    ref = str(ref).strip()
    row = s.get(Dataset, int(ref)) if ref.isdigit() else None
    if row is None:
        row = s.scalars(select(Dataset).where(func.lower(Dataset.name) == ref.lower())).first()
    if row is None:
        raise SpecError("dataset", f"there is no data set {ref!r} (see: python -m core data list)")
    if row.status != "available":
        raise SpecError("dataset", f"data set '{row.name}' is {row.status}, not available")
    accepted = getattr(spec, "dataset_formats", FORMATS)
    if row.format not in accepted:
        raise SpecError("dataset", f"'{row.name}' is {row.format} data; {spec.kind} needs {' or '.join(accepted)} data")
    return [row.id]


def settle_outputs(s, job: Job) -> None:
    """After an import ends badly, nothing is left registered."""
    if job.status == "succeeded":
        return
    for row in s.scalars(select(Dataset).where(Dataset.id.in_(job.dataset_ids or []), Dataset.status == "creating")):
        shutil.rmtree(partial_dir(row.id), ignore_errors=True)
        shutil.rmtree(dataset_dir(row.id), ignore_errors=True)
        s.delete(row)


def publish(dataset_id: int, job_id: int, facts: dict[str, Any]) -> None:
    """Move the saved data set into place, only while its job still runs."""
    from storage.db import write_lock

    src, dst = partial_dir(dataset_id), dataset_dir(dataset_id)
    with session() as s:
        write_lock(s)
        row = s.get(Dataset, dataset_id)
        job = s.get(Job, job_id)
        if row is None or row.status != "creating" or job is None or job.status != "running":
            shutil.rmtree(src, ignore_errors=True)
            raise RuntimeError(f"data set {dataset_id}: its job ended before it was saved")
        for key, value in facts.items():
            setattr(row, key, value)
        row.path = str(dst.relative_to(data_home()))
        row.status = "available"
        s.add(Event(message=f"Data set '{row.name}' imported: {row.num_rows} rows ({row.format})"))
        s.flush()
        if dst.exists():
            shutil.rmtree(dst)
        src.rename(dst)
