"""Data set files: read a file, detect its format, validate every row (pure: no
database, no files written; the registry is data/registry.py).

Formats and the columns a data set has once imported (canonical names):

    text         text
    instruction  prompt, response, system          (Alpaca instruction/input/output mapped)
    chat         messages: [{role, content}, ...]  (roles: system, user, assistant)
    preference   prompt, chosen, rejected
    prompt       prompt (+ answer, when given: a reference for rewards)

`read_file` + `normalize` are pure functions: the page preview, the check
before an import is queued and the import job all use them, so they report the
same bad lines. Line numbers are the file's own (JSONL and CSV lines; for JSON arrays
and Parquet, the record number).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

FORMATS = ("text", "instruction", "chat", "preference", "prompt")
SAMPLES = Path(__file__).resolve().parents[2] / "assets" / "samples"
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
# JSON nested deeper than this is not a row of fields (and would exhaust Python's
# recursion limit: the parser gives up near 1000 levels)
MAX_DEPTH = 100
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
    columns: list[str] = field(default_factory=list)

    def report(self, limit: int = MAX_PROBLEMS_SHOWN) -> str:
        shown = "\n".join(str(p) for p in self.problems[:limit])
        more = len(self.problems) - limit
        return shown + (f"\n... and {more} more" if more > 0 else "")


class DatasetError(ValueError):
    """A data set file or operation that cannot be used; the message says why."""


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
                except RecursionError:
                    column = _too_deep_at(text) + 1
                    parsed.problems.append(Problem(n, f"nested more than {MAX_DEPTH} levels deep at column {column}"))
                    continue
                _add(parsed, n, obj)
    elif suffix == ".json":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
            data = json.loads(text)
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise DatasetError(f"{path.name}: line {line}: undecodable bytes (not UTF-8)") from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path.name}: line {exc.lineno}: invalid JSON: {exc.msg} at column {exc.colno}") from None
        except RecursionError:
            at = _too_deep_at(text)
            line = text.count("\n", 0, at) + 1
            raise DatasetError(f"{path.name}: line {line}: nested more than {MAX_DEPTH} levels deep (a data set row is an object of fields)") from None
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
            reader.fieldnames  # noqa: B018  (reading it reads the header)
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


def _too_deep_at(text: str) -> int:
    """Where JSON text first nests deeper than MAX_DEPTH (an offset; 0 if it does not)."""
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return i
        elif ch in "]}":
            depth -= 1
    return 0


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
        except (json.JSONDecodeError, RecursionError):
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
    return Normalized(fmt, mapping, rows, lines, problems, list(parsed.columns))


def fingerprint(rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
