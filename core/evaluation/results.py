"""Reading evaluation results back: the results table, per-sample records, best
and worst samples, two models' answers side by side, and spec differences
between runs. The Evaluation page and `python -m core eval results|samples` use it.
"""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import select

from storage.db import session
from storage.tables import EvalSample, Job

# metrics where lower is better (everything else: higher is better); lm-eval names
# are "task/metric" or "task/metric:filter"
LOWER_IS_BETTER = {
    "perplexity", "nll", "parse_failures", "judge_errors", "truncated_prompts",
    "word_perplexity", "byte_perplexity", "bits_per_byte",
}


def lower_is_better(name: str) -> bool:
    return name.split("/")[-1].split(":")[0] in LOWER_IS_BETTER
# counts, not qualities: left out of "best metric" choices and bar charts
COUNTS = {"tokens", "texts", "skipped", "samples", "graded", "truncated_prompts"}


def eval_kinds() -> list[str]:
    """The kinds whose output is an evaluation."""
    from core.kinds import KINDS

    return [kind for kind, k in KINDS.items() if k.spec.output == "evaluation"]


def kind_label(kind: str) -> str:
    """A kind's short name: "perplexity", "lm-eval"."""
    from core.kinds import traits

    return traits(kind).short_name() or kind


def eval_jobs(status: Optional[str] = "succeeded", limit: int = 500) -> list[Job]:
    """Evaluation jobs, newest first."""
    query = select(Job).where(Job.kind.in_(eval_kinds())).order_by(Job.id.desc()).limit(limit)
    if status:
        query = query.where(Job.status == status)
    with session() as s:
        return list(s.scalars(query).all())


def results_rows(job_list: Optional[list[Job]] = None) -> list[dict[str, Any]]:
    """One row per evaluation: what was evaluated on what, and every metric."""
    rows = []
    for job in job_list if job_list is not None else eval_jobs():
        result = job.result or {}
        row: dict[str, Any] = {
            "job": job.id,
            "kind": kind_label(job.kind),
            "model": result.get("model", ""),
            "dataset": result.get("dataset") or ", ".join(result.get("tasks", [])),
            "split": result.get("split", ""),
            "samples": result.get("num_samples"),
            "finished": job.finished_at,
        }
        for name, value in (result.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[name] = value
        rows.append(row)
    return rows


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """The metric columns of a results table (counts last)."""
    fixed = {"job", "kind", "model", "dataset", "split", "samples", "finished"}
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in fixed and k not in names]
    return sorted(names, key=lambda n: (n in COUNTS, names.index(n)))


def by_step(job: Job) -> list[dict[str, Any]]:
    """[{step, metrics}] of a checkpoint evaluation, in step order."""
    return [p for p in (job.result or {}).get("by_step", []) if p.get("step") is not None]


def sample_steps(job_id: int) -> list[Optional[int]]:
    """The checkpoints (steps) an evaluation kept samples for; None = the model itself."""
    with session() as s:
        steps = set(s.scalars(select(EvalSample.step).where(EvalSample.job_id == job_id).distinct()).all())
    return sorted(steps - {None}) + ([None] if None in steps else [])


def samples(job_id: int, step: Optional[int] = None) -> list[dict[str, Any]]:
    """Every stored sample of an evaluation (of the model itself unless `step`)."""
    with session() as s:
        query = select(EvalSample).where(EvalSample.job_id == job_id)
        query = query.where(EvalSample.step.is_(None) if step is None else EvalSample.step == step)
        rows = s.scalars(query.order_by(EvalSample.idx, EvalSample.id)).all()
        return [
            {
                "idx": r.idx,
                "step": r.step,
                "prompt": r.prompt,
                "reference": r.reference,
                "output": r.output,
                "scores": dict(r.scores or {}),
                "extra": dict(r.extra or {}),
            }
            for r in rows
        ]


def sample_metrics(rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in rows:
        names += [k for k, v in r["scores"].items() if isinstance(v, (int, float)) and k not in names and k not in COUNTS]
    return names


def best_and_worst(rows: list[dict[str, Any]], metric: str, n: int = 5) -> tuple[list[dict], list[dict]]:
    """The n best and n worst samples by one metric (samples without it left out)."""
    scored = [r for r in rows if isinstance(r["scores"].get(metric), (int, float))]
    scored.sort(key=lambda r: r["scores"][metric], reverse=not lower_is_better(metric))
    return scored[:n], list(reversed(scored[-n:])) if len(scored) > n else list(reversed(scored))


def paired(job_a: int, job_b: int) -> list[dict[str, Any]]:
    """Two evaluations' answers to the same prompts, matched by data set row."""
    a = {(r["idx"], r["prompt"]): r for r in samples(job_a)}
    out = []
    for r in samples(job_b):
        other = a.get((r["idx"], r["prompt"]))
        if other is not None:
            out.append({"idx": r["idx"], "prompt": r["prompt"], "reference": r["reference"], "a": other, "b": r})
    return out


def spec_diff(job_list: list[Job]) -> list[dict[str, Any]]:
    """The spec fields that differ between runs: [{field, <job id>: value, ...}]."""
    specs = {job.id: {k: v for k, v in (job.spec or {}).items() if k != "judge_api_key"} for job in job_list}
    fields = sorted({k for spec in specs.values() for k in spec})
    rows = []
    for name in fields:
        values = {job_id: spec.get(name) for job_id, spec in specs.items()}
        if len({repr(v) for v in values.values()}) > 1:
            rows.append({"field": name, **{f"#{job_id}": v for job_id, v in values.items()}})
    return rows
