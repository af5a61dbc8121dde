"""The data set import job: read, validate, split, save, measure.

    python -m core data import assets/samples/instructions.jsonl --name alpaca-demo --wait
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from pathlib import Path
from typing import Any, Optional

from core import datasets, models
from core.run import BadInput, Run
from core.specs import ImportDatasetSpec
from storage.db import data_home

MAX_LENGTHS_KEPT = 20_000  # token lengths stored for the histogram


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
    try:
        parsed = datasets.read_file(Path(spec.path))
        norm = datasets.normalize(parsed, spec.format or None, spec.mapping)
    except datasets.DatasetError as exc:
        raise BadInput(str(exc)) from None
    if norm.problems and not spec.drop_bad_rows:
        raise BadInput(
            f"{len(norm.problems)} bad row(s) in {Path(spec.path).name}; fix them or import with "
            f"--drop-bad-rows:\n{norm.report()}"
        )
    if not norm.rows:
        raise BadInput(f"{Path(spec.path).name}: no usable rows")
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
        "columns": parsed.columns,
        "splits": {name: len(ds) for name, ds in splits.items()},
        "dropped": [{"line": p.line, "message": p.message} for p in norm.problems],
        "seed": spec.seed,
    }
    tok_model = pick_tokenizer_model(spec.tokenizer_model)
    if tok_model is not None:
        run.progress(3, total, f"measuring tokens with the '{tok_model.name}' tokenizer", force=True)
        tokenizer = AutoTokenizer.from_pretrained(data_home() / tok_model.path)
        from core.sft_format import token_lengths

        lengths = token_lengths(norm.format, norm.rows, tokenizer)
        details["tokens"] = dict(token_stats(lengths), tokenizer_model=tok_model.name, tokenizer_model_id=tok_model.id)
        (out / "token_lengths.json").write_text(json.dumps(lengths[:MAX_LENGTHS_KEPT]))
    datasets.publish(
        dataset_id,
        run.job_id,
        dict(format=norm.format, num_rows=len(norm.rows), fingerprint=datasets.fingerprint(norm.rows), details=details),
    )
    return {"dataset_id": dataset_id, "rows": len(norm.rows), "dropped": len(norm.problems)}
