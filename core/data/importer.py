"""The data set import job: read, validate, split, save, measure.

    python -m core data import assets/samples/instructions.jsonl --name alpaca-demo --wait
    python -m core data import mine.csv --name mine --format instruction --map prompt=question --drop-bad-rows
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pydantic import Field, field_validator

from core.access import paths
from core.data import files
from core.data import registry as datasets
from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.spec import Name, Spec, SpecError
from storage.db import data_home

MAX_LENGTHS_KEPT = 20_000  # token lengths stored for the histogram


class ImportDatasetSpec(Spec):
    """Import a JSONL, JSON, CSV or Parquet file as a validated data set."""

    kind: ClassVar[str] = "import_dataset"
    light: ClassVar[bool] = True
    command: ClassVar[tuple[str, ...]] = ("data", "import")
    positional: ClassVar[tuple[str, ...]] = ("path",)
    flags: ClassVar[dict[str, str]] = {"mapping": "map"}
    pair_format: ClassVar[dict[str, str]] = {"mapping": "FIELD=COLUMN, e.g. response=answer"}
    output: ClassVar[str] = "dataset"
    output_field: ClassVar[str] = "name"

    path: str
    """The file to import (JSONL, JSON, CSV or Parquet)."""
    name: Name
    """Name of the data set (unique)."""
    format: Literal["", "text", "instruction", "chat", "preference", "prompt"] = ""
    """The rows' format; empty = detect it from the columns."""
    mapping: dict[str, str] = {}
    """Canonical field -> column of the file (FIELD=COLUMN), where the detected mapping is wrong."""
    drop_bad_rows: bool = False
    """Import the good rows and report the bad ones (default: refuse the file)."""
    validation_fraction: float = Field(0.1, ge=0, le=0.5)
    """Share of rows held out as the validation split (0 for none)."""
    seed: int = Field(0, ge=0)
    """Seed of the train/validation shuffle."""
    tokenizer_model: str = ""
    """Model (name or id) whose tokenizer measures token statistics; empty = any available."""

    @field_validator("path")
    @classmethod
    def _file(cls, value: str) -> str:
        if not value:
            raise ValueError("(empty) is not a file")
        path = paths.usable(value, "file")  # in the app: an upload, a sample, or a file under an allowed root
        if not path.is_file():
            raise ValueError(f"{value} is not a file")
        if path.suffix.lower() not in files.EXTENSIONS:
            raise ValueError(f"{path.name}: unsupported file type; use one of {', '.join(files.EXTENSIONS)}")
        if path.stat().st_size > files.MAX_FILE_BYTES:
            raise ValueError(f"{path.name} is over the {files.MAX_FILE_BYTES // 2**20} MB limit")
        return str(path.resolve())  # the worker runs elsewhere: keep the path it can find

    @field_validator("mapping", mode="before")
    @classmethod
    def _known_fields(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(files.ALIASES))
            if unknown:
                raise ValueError(f"{unknown[0]!r} is not a field of any format: map one of {', '.join(files.ALIASES)}")
        return value

    def title(self) -> str:
        return f"Import data set '{self.name}' from {Path(self.path).name}"

    def check_inputs(self) -> None:
        """Every row is checked before the job is queued: a refused file registers nothing."""
        checked = check(self)
        if checked.problems and not self.drop_bad_rows:
            raise SpecError("path", bad_rows(self, checked))


def bad_rows(spec: ImportDatasetSpec, norm: files.Normalized) -> str:
    return (
        f"{len(norm.problems)} bad row(s) in {Path(spec.path).name}; nothing imported: fix the file, or import "
        f"the good rows (--drop-bad-rows):\n{norm.report()}"
    )


def check(spec: ImportDatasetSpec) -> files.Normalized:
    """Read and check every row; a file that cannot be used at all is a SpecError."""
    name = Path(spec.path).name
    try:
        norm = files.normalize(files.read_file(Path(spec.path)), spec.format or None, spec.mapping)
    except files.DatasetError as exc:
        raise SpecError("path", str(exc)) from None
    if not norm.rows and not norm.problems:
        raise SpecError("path", f"{name} has no rows: give a file with at least one record")
    if not norm.rows:
        raise SpecError("path", f"none of the {len(norm.problems)} row(s) of {name} is usable:\n{norm.report()}")
    return norm


def pick_tokenizer_model(ref: str = "") -> Optional[Any]:
    """The model whose tokenizer measures a data set: the one asked for, else the
    starter, else the newest available model (None when there is none)."""
    if ref:
        try:
            row = models.find(ref)
        except models.ModelError as exc:
            raise BadInput(f"tokenizer_model: {exc}") from None
        if row.status != "available":
            raise BadInput(f"tokenizer_model: model '{row.name}' is {row.status}")
        return row
    available = [m for m in models.list_models() if m.status == "available"]
    starters = [m for m in available if m.source == "starter"]
    return (starters or available[::-1] or [None])[0]


def token_stats(lengths: list[int]) -> dict[str, Any]:
    ordered = sorted(lengths)
    return {
        "examples": len(ordered),
        "total": sum(ordered),
        "mean": round(statistics.fmean(ordered), 1),
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def run_import_dataset(spec: ImportDatasetSpec, run: Run) -> dict[str, Any]:
    from datasets import Dataset as HFDataset
    from datasets import DatasetDict
    from transformers import AutoTokenizer

    total = 4
    dataset_id = run.dataset_ids[0]
    out = datasets.partial_dir(dataset_id)
    shutil.rmtree(out, ignore_errors=True)

    run.progress(0, total, f"reading {Path(spec.path).name}", force=True)
    norm = check(spec)  # again: the file may have changed since it was queued
    if norm.problems and not spec.drop_bad_rows:
        raise BadInput(bad_rows(spec, norm))
    columns = ", ".join(f"{k} <- {v}" for k, v in norm.mapping.items())
    run.progress(0, total, f"{len(norm.rows)} rows, format {norm.format}: {columns}", force=True)
    for p in norm.problems:
        print(f"dropped {p}", flush=True)
    run.check_cancel()

    run.progress(1, total, f"splitting {len(norm.rows)} rows", force=True)
    order = list(range(len(norm.rows)))
    random.Random(spec.seed).shuffle(order)
    n_val = int(round(len(order) * spec.validation_fraction))
    if spec.validation_fraction > 0 and len(order) >= 10:
        n_val = max(1, n_val)
    else:
        n_val = 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    splits = {"train": HFDataset.from_list([norm.rows[i] for i in train_idx])}
    if val_idx:
        splits["validation"] = HFDataset.from_list([norm.rows[i] for i in val_idx])
    run.check_cancel()

    run.progress(2, total, "saving", force=True)
    DatasetDict(splits).save_to_disk(str(out))
    run.check_cancel()

    details: dict[str, Any] = {
        "source_file": spec.path,
        "mapping": norm.mapping,
        "columns": norm.columns,
        "splits": {name: len(ds) for name, ds in splits.items()},
        "dropped": [{"line": p.line, "message": p.message} for p in norm.problems],
        "seed": spec.seed,
    }
    tok_model = pick_tokenizer_model(spec.tokenizer_model)
    if tok_model is not None:
        run.progress(3, total, f"measuring tokens with the '{tok_model.name}' tokenizer", force=True)
        tokenizer = AutoTokenizer.from_pretrained(data_home() / tok_model.path)
        from core.data.render import token_lengths

        lengths = token_lengths(norm.format, norm.rows, tokenizer)
        details["tokens"] = dict(token_stats(lengths), tokenizer_model=tok_model.name, tokenizer_model_id=tok_model.id)
        (out / "token_lengths.json").write_text(json.dumps(lengths[:MAX_LENGTHS_KEPT]))
    datasets.publish(
        dataset_id,
        run.job_id,
        dict(format=norm.format, num_rows=len(norm.rows), fingerprint=files.fingerprint(norm.rows), details=details),
    )
    return {"dataset_id": dataset_id, "rows": len(norm.rows), "dropped": len(norm.problems)}
