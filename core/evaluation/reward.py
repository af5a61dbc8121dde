"""A reward verdict on a model: answers generated for the prompts of a data set,
each scored by a registered reward model (core/inference/reward.py), or by the
reward functions a GRPO run trained with (core/rewards.py: its rules, its copy
of the user's file, its reward model, weighted as it trained); the mean is the
metric. With `checkpoints`, every checkpoint of the run that trained the model
is scored too, so a run can be judged by reward, not loss.

    python -m core eval reward --model POLICY --reward-model RM --dataset PROMPTS --checkpoints --wait
    python -m core eval reward --model POLICY --rewards-from GRPO_JOB_ID --dataset PROMPTS --wait
"""

from __future__ import annotations

import statistics
from typing import Any, ClassVar, Optional

from pydantic import Field, model_validator

from core.data import registry as datasets
from core.data.render import answer_example, prompt_example
from core.evaluation.common import EvalOnDataSpec, evaluate_targets, rows_of
from core.evaluation.generation import answers, generation_settings, prompts_of
from core.jobs import lifecycle as jobs
from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.spec import SpecError
from storage.db import data_home


class EvalRewardSpec(EvalOnDataSpec):
    """Answers generated for the prompts of a data set, scored by a reward model
    (mean, spread, best and worst)."""

    kind: ClassVar[str] = "eval_reward"
    command: ClassVar[tuple[str, ...]] = ("eval", "reward")
    input_models: ClassVar[tuple[str, ...]] = ("model", "reward_model")
    dataset_formats: ClassVar[tuple[str, ...]] = ("prompt", "instruction", "chat", "preference")

    reward_model: str = ""
    """Reward model that scores the answers: name or id (or rewards_from)."""
    rewards_from: int = Field(0, ge=0)
    """Score with the reward functions of this GRPO job instead (as weighted in its run)."""
    max_new_tokens: int = Field(64, ge=1, le=32768)
    """Longest answer, in tokens."""
    temperature: float = Field(0.0, ge=0, le=10)
    """0 = greedy."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling (with temperature > 0)."""
    batch_size: int = Field(8, ge=1, le=4096)
    """Prompts generated together."""

    @model_validator(mode="after")
    def _one_judge(self) -> "EvalRewardSpec":
        if bool(self.reward_model.strip()) == bool(self.rewards_from):
            raise SpecError("reward_model", "give a reward model, or rewards_from (a GRPO job whose rewards score the answers), not both")
        return self

    def check_inputs(self) -> None:
        if self.reward_model.strip():
            try:
                rm = models.find(self.reward_model)
            except models.ModelError:
                rm = None  # named when the job's inputs are resolved
            if rm is not None and not models.is_reward_model(rm):
                raise SpecError("reward_model", f"'{rm.name}' is not a reward model (train one: python -m core train reward)")
        else:
            scorer_of(self.rewards_from)
        super().check_inputs()

    def title(self) -> str:
        by = f"'{self.reward_model}'" if self.reward_model.strip() else f"the rewards of job {self.rewards_from}"
        return f"Reward of '{self.model}' by {by} on '{self.dataset}'" + (" (checkpoints)" if self.checkpoints else "")


def scorer_of(job_id: int):
    """The spec of a job whose reward functions score answers (SpecError if none)."""
    from core.kinds import spec_from_dict, traits

    try:
        job = jobs.get(job_id)
    except jobs.JobNotFound:
        raise SpecError("rewards_from", f"there is no job {job_id}") from None
    if not traits(job.kind).reward_functions:
        raise SpecError("rewards_from", f"job {job_id} is a {job.kind} job; give a GRPO job, whose reward functions score the answers")
    return job, spec_from_dict(job.spec)


def _judge(spec: EvalRewardSpec, run: Run):
    """(score(pairs of question, answer, reference) -> [{name: value}], what scored them)."""
    from core.inference import reward

    if spec.reward_model.strip():
        rm_row = models.get(run.model_ids[1])
        run.progress(0, None, f"loading the reward model '{rm_row.name}'", force=True)
        rm, rm_tokenizer = reward.load(rm_row)
        return (lambda pairs: [{"reward": v} for v in reward.score(rm, rm_tokenizer, [(q, a) for q, a, _ in pairs])]), rm_row.name
    from core import rewards

    job, grpo = scorer_of(spec.rewards_from)
    copy = jobs.run_dir(job.id) / "reward_file.py"
    if grpo.reward_file:  # the code the run trained with, not the file as it is now
        grpo = grpo.model_copy(update={"reward_file": str(copy)})
    rm_row = models.get(job.model_ids[2]) if grpo.reward_model.strip() else None
    run.progress(0, None, f"loading the reward functions of job {job.id}: {', '.join(grpo.reward_names())}", force=True)
    funcs, weights, _ = rewards.build(grpo, run.dir, rm_row)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(data_home() / models.get(job.model_ids[1]).path)  # the policy's, as in training

    def score(pairs):
        prompts = [prompt_example(q, tokenizer) for q, _, _ in pairs]
        completions = [answer_example(a, tokenizer) for _, a, _ in pairs]
        columns = {"answer": [r for _, _, r in pairs], "completion_ids": [tokenizer(a)["input_ids"] for _, a, _ in pairs]}
        table = {f.__name__: f(prompts=prompts, completions=completions, **columns) for f in funcs}
        out = []
        for i in range(len(pairs)):
            row = {name: values[i] for name, values in table.items()}
            parts = [row[f.__name__] for f in funcs]  # a function may say None: no reward for this answer
            row["reward"] = None if None in parts else sum(w * v for w, v in zip(weights, parts))
            out.append(row)
        return out

    return score, f"the rewards of job {job.id} ({', '.join(grpo.reward_names())})"


def run_eval_reward(spec: EvalRewardSpec, run: Run) -> dict[str, Any]:
    data_row = datasets.get(run.dataset_ids[0])
    rows, split = rows_of(data_row, spec.split, spec.max_samples)
    judge, judged_by = _judge(spec, run)

    def score(model, tokenizer, tick):
        prompts = prompts_of(data_row.format, rows, tokenizer, need_reference=False)
        if not prompts:
            raise BadInput(f"dataset: the {split} split of '{data_row.name}' has no prompts")
        samples, counts = [], {}
        for (i, question, _, reference, _), output in answers(model, tokenizer, prompts, spec, tick, counts):
            samples.append({"idx": i, "prompt": question, "reference": reference, "output": output})
        for sample, scores in zip(samples, judge([(s["prompt"], s["output"], s["reference"]) for s in samples])):
            sample["scores"] = scores
        values = [s["scores"]["reward"] for s in samples if s["scores"]["reward"] is not None]
        if not values:
            raise BadInput("no answer got a reward: every one had a function return None")
        metrics = {
            "mean_reward": statistics.fmean(values),
            "reward_std": statistics.pstdev(values),
            "min_reward": min(values),
            "max_reward": max(values),
            "samples": len(samples),
            **{f"mean_{name}": statistics.fmean(got) for name in samples[0]["scores"] if name != "reward"
               if (got := [s["scores"][name] for s in samples if s["scores"][name] is not None])},
            **counts,
        }
        return metrics, samples

    result = evaluate_targets(spec, run, score, len(rows))
    result.update(split=split, num_samples=len(rows), reward_model=judged_by, settings=generation_settings(spec))
    return result


# --- before and after an alignment run ------------------------------------------------------


def before_after_specs(run_job, n: int, reward_model: str = "", rewards_from: int = 0) -> list[EvalRewardSpec]:
    """The two evaluations that compare an alignment run's starting policy with
    the policy it made: the same prompts (its data set), the same judge (a
    reward model, or the reward functions of a GRPO run)."""
    start, made, data = run_job.model_ids[1], run_job.model_ids[0], run_job.dataset_ids[0]
    seed = (run_job.spec or {}).get("seed", 0)
    return [EvalRewardSpec(model=str(m), dataset=str(data), reward_model=reward_model, rewards_from=rewards_from,
                           max_samples=n, seed=seed) for m in (start, made)]


def before_after_jobs(run_job, reward_model_id: Optional[int] = None, rewards_from: int = 0,
                      status: tuple[str, ...] = ("succeeded",)):
    """(before, after): the newest reward evaluations of the starting policy and
    of the run's output on the run's data set by this judge, or None."""
    from sqlalchemy import select

    from storage.db import session
    from storage.tables import Job

    with session() as s:
        found = s.scalars(select(Job).where(Job.kind == EvalRewardSpec.kind, Job.status.in_(status)).order_by(Job.id.desc())).all()
    newest = {}
    for job in found:
        judge = (job.model_ids or [None])[1:] == [reward_model_id] if reward_model_id else (job.spec or {}).get("rewards_from") == rewards_from
        if list(job.dataset_ids or []) == [run_job.dataset_ids[0]] and judge:
            newest.setdefault(job.model_ids[0], job)
    before, after = newest.get(run_job.model_ids[1]), newest.get(run_job.model_ids[0])
    return (before, after) if before and after else None
