"""A reward model's verdict on a model: answers generated for the prompts of a
data set, each scored by a registered reward model (core/inference/reward.py);
the mean score is the metric. With `checkpoints`, every checkpoint of the run
that trained the model is scored too, so a run can be judged by reward, not loss.

    python -m core eval reward --model POLICY --reward-model RM --dataset PROMPTS --checkpoints --wait
"""

from __future__ import annotations

import statistics
from typing import Any, ClassVar

from pydantic import Field

from core.data import registry as datasets
from core.evaluation.common import EvalOnDataSpec, evaluate_targets, rows_of
from core.evaluation.generation import answers, generation_settings, prompts_of
from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.spec import Ref, SpecError


class EvalRewardSpec(EvalOnDataSpec):
    """Answers generated for the prompts of a data set, scored by a reward model
    (mean, spread, best and worst)."""

    kind: ClassVar[str] = "eval_reward"
    command: ClassVar[tuple[str, ...]] = ("eval", "reward")
    input_models: ClassVar[tuple[str, ...]] = ("model", "reward_model")
    dataset_formats: ClassVar[tuple[str, ...]] = ("prompt", "instruction", "chat", "preference")

    reward_model: Ref = Field(description="Reward model that scores the answers: name or id.")
    max_new_tokens: int = Field(64, ge=1, le=32768)
    """Longest answer, in tokens."""
    temperature: float = Field(0.0, ge=0, le=10)
    """0 = greedy."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling (with temperature > 0)."""
    batch_size: int = Field(8, ge=1, le=4096)
    """Prompts generated together."""

    def check_inputs(self) -> None:
        try:
            rm = models.find(self.reward_model)
        except models.ModelError:
            rm = None  # named when the job's inputs are resolved
        if rm is not None and not models.is_reward_model(rm):
            raise SpecError("reward_model", f"'{rm.name}' is not a reward model (train one: python -m core train reward)")
        super().check_inputs()

    def title(self) -> str:
        return f"Reward of '{self.model}' by '{self.reward_model}' on '{self.dataset}'" + (" (checkpoints)" if self.checkpoints else "")


def run_eval_reward(spec: EvalRewardSpec, run: Run) -> dict[str, Any]:
    from core.inference import reward

    data_row = datasets.get(run.dataset_ids[0])
    rows, split = rows_of(data_row, spec.split, spec.max_samples)
    rm_row = models.get(run.model_ids[1])
    run.progress(0, None, f"loading the reward model '{rm_row.name}'", force=True)
    rm, rm_tokenizer = reward.load(rm_row)

    def score(model, tokenizer, tick):
        prompts = prompts_of(data_row.format, rows, tokenizer, need_reference=False)
        if not prompts:
            raise BadInput(f"dataset: the {split} split of '{data_row.name}' has no prompts")
        samples, counts = [], {}
        for (i, question, _, reference, _), output in answers(model, tokenizer, prompts, spec, tick, counts):
            samples.append({"idx": i, "prompt": question, "reference": reference, "output": output})
        values = reward.score(rm, rm_tokenizer, [(s["prompt"], s["output"]) for s in samples])
        for sample, value in zip(samples, values):
            sample["scores"] = {"reward": value}
        metrics = {
            "mean_reward": statistics.fmean(values),
            "reward_std": statistics.pstdev(values),
            "min_reward": min(values),
            "max_reward": max(values),
            "samples": len(samples),
            **counts,
        }
        return metrics, samples

    result = evaluate_targets(spec, run, score, len(rows))
    result.update(split=split, num_samples=len(rows), reward_model=rm_row.name, settings=generation_settings(spec))
    return result


# --- before and after an alignment run ------------------------------------------------------


def before_after_specs(run_job, reward_model: str, n: int) -> list[EvalRewardSpec]:
    """The two evaluations that compare an alignment run's starting policy with
    the policy it made: the same prompts (its data set), the same reward model."""
    start, made, data = run_job.model_ids[1], run_job.model_ids[0], run_job.dataset_ids[0]
    seed = (run_job.spec or {}).get("seed", 0)
    return [EvalRewardSpec(model=str(m), dataset=str(data), reward_model=reward_model, max_samples=n, seed=seed) for m in (start, made)]


def before_after_jobs(run_job, reward_model_id: int, status: tuple[str, ...] = ("succeeded",)):
    """(before, after): the newest reward evaluations of the starting policy and
    of the run's output on the run's data set by this reward model, or None."""
    from sqlalchemy import select

    from storage.db import session
    from storage.tables import Job

    with session() as s:
        found = s.scalars(select(Job).where(Job.kind == EvalRewardSpec.kind, Job.status.in_(status)).order_by(Job.id.desc())).all()
    newest = {}
    for job in found:
        if list(job.dataset_ids or []) == [run_job.dataset_ids[0]] and (job.model_ids or [None, None])[1:] == [reward_model_id]:
            newest.setdefault(job.model_ids[0], job)
    before, after = newest.get(run_job.model_ids[1]), newest.get(run_job.model_ids[0])
    return (before, after) if before and after else None
