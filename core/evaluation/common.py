"""What the evaluation kinds share: the spec fields of an evaluation on a data set,
what to evaluate (the model, or each checkpoint of the run that trained it), the
rows, and storing samples and metrics.

Every evaluation job stores each sample (prompt, reference, output, scores) in
`eval_samples`, its set-level metrics in the result (and as job metrics at the
checkpoint's training step, for the over-steps chart), and records the model,
the data set fingerprint, the settings and the seed. With `checkpoints`, every
checkpoint the training run kept is evaluated too, oldest first. One kind a
file beside this one: perplexity.py, generation.py, judge.py, lm_eval.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional

from pydantic import Field

from core.data import registry as datasets
from core.format import jsonable
from core.inference import generate
from core.jobs.run import BadInput, Run, store_samples
from core.models import registry as models
from core.spec import Ref, Spec, SpecError


class EvalSpec(Spec):
    """What every evaluation is: it reads a model and makes an evaluation."""

    output: ClassVar[str] = "evaluation"
    busy: ClassVar[str] = "evaluating"
    input_models: ClassVar[tuple[str, ...]] = ("model",)

    model: Ref
    """Model or adapter to evaluate: name or id."""


class EvalOnDataSpec(EvalSpec):
    """An evaluation on the rows of a data set."""

    input_datasets: ClassVar[tuple[str, ...]] = ("dataset",)

    dataset: Ref
    """Data set: name or id."""
    split: Literal["auto", "validation", "train", "all"] = "auto"
    """validation, train, all, or auto (validation when there is one, else train)."""
    max_samples: int = Field(50, ge=0)
    """Evaluate the first N rows of the split (0: all)."""
    checkpoints: bool = False
    """Also evaluate every checkpoint kept by the training run that made the model."""
    seed: int = Field(0, ge=0)
    """Sampling seed, recorded with the result (greedy decoding and perplexity ignore it)."""

    def check_inputs(self) -> None:
        """What the registry already knows is checked before a job is queued: the
        split exists, and the model's run kept checkpoints when they are asked for."""
        try:
            data_row = datasets.find(self.dataset)
            row = models.find(self.model)
        except (datasets.DatasetError, models.ModelError):
            return  # named when the job's inputs are resolved
        splits = (data_row.details or {}).get("splits") or {}
        if self.split in ("train", "validation") and splits and self.split not in splits:
            raise SpecError("split", f"'{data_row.name}' has no {self.split} split (it has: {', '.join(splits)})")
        if self.checkpoints and not checkpoints_of(row):
            raise SpecError(
                "checkpoints", f"'{row.name}' has no training checkpoints to evaluate "
                "(only models trained here keep them; turn checkpoints off)"
            )


# --- what to evaluate ---------------------------------------------------------------------


def checkpoints_of(row) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint kept by the run that trained `row`."""
    from core.training.common import run_checkpoints

    return run_checkpoints(row.job_id) if row.job_id else []


def targets(row, with_checkpoints: bool) -> list[tuple[Optional[int], Optional[Path]]]:
    """(step, weights folder) to evaluate: the checkpoints, then the model itself
    (step = its training steps; None for a model that was not trained here)."""
    final_step = (row.details or {}).get("steps")
    if not with_checkpoints:
        return [(final_step, None)]
    ckpts = checkpoints_of(row)
    if not ckpts:
        raise BadInput(
            f"checkpoints: '{row.name}' has no training checkpoints to evaluate "
            "(only models trained here keep them; turn checkpoints off)"
        )
    listed: list[tuple[Optional[int], Optional[Path]]] = [(s, p) for s, p in ckpts if s != final_step]
    return listed + [(final_step, None)]


def rows_of(data_row, split: str, max_samples: int) -> tuple[list[dict[str, Any]], str]:
    """The rows to evaluate and the split they came from."""
    splits = datasets.load(data_row)
    if split == "auto":
        split = "validation" if "validation" in splits and len(splits["validation"]) else "train"
    if split == "all":
        rows = [r for name in ("train", "validation") if name in splits for r in splits[name]]
    elif split in splits:
        rows = list(splits[split])
    else:
        raise BadInput(f"split: '{data_row.name}' has no {split} split (it has: {', '.join(splits)})")
    if max_samples:
        rows = rows[:max_samples]
    if not rows:
        raise BadInput(f"dataset: the {split} split of '{data_row.name}' is empty")
    return rows, split


def finite(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def evaluate_targets(
    spec, run: Run, score: Callable[[Any, Any, Callable[[int, str], None]], tuple[dict[str, Any], list[dict]]], n_per_target: int
) -> dict[str, Any]:
    """Run `score(model, tokenizer, tick)` on each target (checkpoints, then the model);
    store its samples and metrics; the model's own metrics are the job's."""
    row = models.get(run.model_ids[0])
    data_row = datasets.get(run.dataset_ids[0]) if run.dataset_ids else None
    chosen = targets(row, spec.checkpoints)
    total = n_per_target * len(chosen)
    by_step: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    for number, (step, weights) in enumerate(chosen):
        what = f"checkpoint {step}" if weights is not None else f"'{row.name}'"
        run.progress(number * n_per_target, total, f"loading {what}", force=True)
        model, tokenizer = generate.load(row, weights)
        run.check_cancel()
        done = number * n_per_target

        def tick(n: int, message: str, done: int = done, what: str = what) -> None:
            run.check_cancel()
            run.progress(done + n, total, f"{what}: {message}")

        metrics, samples = score(model, tokenizer, tick)
        store_samples(run.job_id, step if weights is not None else None, samples)
        if step is not None:
            run.metrics(step, finite(metrics))
        by_step.append({"step": step, "checkpoint": str(weights) if weights else None, "metrics": metrics})
        del model
    run.progress(total, total, "done", force=True)
    return jsonable({
        "metrics": metrics,
        "model": row.name,
        "model_id": row.id,
        "dataset": data_row.name if data_row else None,
        "dataset_id": data_row.id if data_row else None,
        "dataset_fingerprint": data_row.fingerprint if data_row else None,
        "seed": spec.seed,
        "by_step": by_step if spec.checkpoints else [],
    })
