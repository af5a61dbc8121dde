"""Group relative policy optimisation: for each prompt of a prompt data set the
policy writes `num_generations` answers, the reward functions chosen in the spec
score them, and each answer is pushed up or down by how it did against its
group (TRL's GRPOTrainer). Rewards (core/rewards.py): built-in rules,
a registered reward model, a Python file of the user's; several at once, weighted.

    python -m core train grpo --model POLICY --dataset PROMPTS --output-name OUT --match numeric --max-steps 20 --wait

Each step's rollouts (prompt, answer, every reward) are stored with the run
(the RLHF page browses them by step).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from core.access import accounts, audit, masking, paths
from core.access.accounts import Actor
from core.data import registry as datasets
from core.data.render import answer_example, prompt_example
from core.jobs.run import BadInput, Run, store_samples
from core.models import registry as models
from core.spec import Ref, SpecError
from core import rewards
from core.training.common import (
    TrainSpec, fit, last_logged, load_model, make_callback, register, reproduce, result, save_policy, trainer_args,
)
from storage.db import data_home

REWARD_NAMES = ("length", "format", "contains", "avoids", "match", "file", "model")
LOGGED = {
    "loss": "train_loss",
    "reward": "reward",
    "reward_std": "reward_std",
    **{f"rewards/{n}/mean": f"reward_{n}" for n in REWARD_NAMES},
    **{f"rewards/{n}/std": f"reward_{n}_std" for n in REWARD_NAMES},
    "kl": "kl",
    "entropy": "entropy",
    "completions/mean_length": "completion_length",
    "completions/clipped_ratio": "clipped_ratio",
    "frac_reward_zero_std": "frac_equal_rewards",
    "clip_ratio/region_mean": "clip_ratio",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "num_tokens": "num_tokens",
}
ROLLOUTS_PER_STEP = 8


class GRPOSpec(TrainSpec):
    """Group relative policy optimisation of a policy on a prompt data set, with
    rule, model and user reward functions (TRL GRPOTrainer)."""

    kind: ClassVar[str] = "grpo"
    command: ClassVar[tuple[str, ...]] = ("train", "grpo")
    aligns: ClassVar[str] = "GRPO (prompts + reward functions)"
    input_models: ClassVar[tuple[str, ...]] = ("model", "reward_model")
    dataset_formats: ClassVar[tuple[str, ...]] = ("prompt",)
    reward_functions: ClassVar[bool] = True
    user_code: ClassVar[tuple[str, ...]] = ("reward_file",)
    pair_format: ClassVar[dict[str, str]] = {"reward_weights": "NAME=WEIGHT, e.g. model=0.5"}
    logged: ClassVar[dict[str, str]] = LOGGED
    panels: ClassVar[list[tuple[str, tuple[str, ...]]]] = [
        ("Reward", ("reward",)),
        ("Reward of each function", tuple(f"reward_{n}" for n in REWARD_NAMES)),
        ("Reward spread in a group (std)", ("reward_std",)),
        ("Groups with all rewards equal (nothing to learn)", ("frac_equal_rewards",)),
        ("KL to the reference", ("kl",)),
        ("Answer length (tokens)", ("completion_length",)),
        ("Answers cut at the length limit", ("clipped_ratio",)),
        ("Clipped probability ratio", ("clip_ratio",)),
        ("Loss", ("train_loss",)),
    ]
    default_lr: ClassVar[tuple[float, float]] = (1e-6, 2e-5)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(max_steps=20, batch_size=4, num_generations=4, max_completion_length=48, save_steps=10),
        "standard": dict(max_steps=0, epochs=1.0, batch_size=8, num_generations=8, max_completion_length=256, save_steps=50),
    }

    model: Ref = Field(description="Policy to start from (often an SFT output; a LoRA adapter trains on as itself): name or id.")
    dataset: Ref = Field(description="Prompt data set (prompt; an answer column for the match reward): name or id.")
    batch_size: int = Field(4, ge=1, le=4096, description="Answers per device per step (num_generations answers per prompt).")
    num_generations: int = Field(4, ge=2, le=256)
    """Answers written for each prompt; each is rewarded against its group."""
    max_completion_length: int = Field(64, ge=1, le=32768)
    """Answers stop after this many tokens."""
    temperature: float = Field(1.0, gt=0, le=5)
    """Sampling temperature of the answers (variety within a group is what GRPO learns from)."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo"] = "dapo"
    """TRL's GRPO loss: grpo (per-sequence), dr_grpo (no length bias), dapo (per-token, TRL's default), ..."""
    beta: float = Field(0.04, ge=0, le=10)
    """KL penalty towards the starting policy (0: no reference model, no KL, faster)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the reward spread of the group, of the batch, or not at all (Dr. GRPO)."""
    reward_model: str = ""
    """A registered reward model that scores each answer (name or id; empty: none)."""
    target_length: int = Field(0, ge=0)
    """Length reward: answers near this many tokens score 1, far ones 0 (0: off)."""
    format_regex: str = ""
    """Format reward: 1 when the answer matches this regular expression (search; ^ and $ for the whole answer)."""
    contains: list[str] = []
    """Contains reward: the share of these keywords the answer contains."""
    avoids: list[str] = []
    """Avoids reward: 1 minus the share of these keywords the answer contains."""
    match: Literal["", "exact", "numeric"] = ""
    """Match reward against the data set's answer column: exact text, or the last number (empty: off)."""
    reward_file: str = ""
    """A Python file defining reward(prompts, completions, **columns) -> list[float]; it runs confined (no
    network, its own folder). prompts and completions arrive as chat messages when the policy has a chat
    template (else as text), completion_ids as token ids, each column of the data set by its name."""
    reward_weights: dict[str, float] = {}
    """Weight of each reward by name (length, format, contains, avoids, match, file, model); 1 when not given."""

    @field_validator("format_regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        return value

    @field_validator("reward_file")
    @classmethod
    def _code_file(cls, value: str) -> str:
        if not value:
            return value
        path = paths.usable(value, "file")  # in the app: an upload or a file under an allowed root
        if not path.is_file():
            raise ValueError(f"{value}: no such file")
        if path.suffix != ".py":
            raise ValueError(f"{path.name}: give a Python file (.py) that defines reward(prompts, completions, **columns)")
        return str(path.resolve())  # the worker runs elsewhere: keep the path it can find

    @model_validator(mode="after")
    def _rewards_and_groups(self) -> "GRPOSpec":
        if not self.reward_names():
            raise SpecError(
                "reward_model", "choose at least one reward: a reward model, a rule (target_length, format_regex, "
                "contains, avoids, match) or a reward_file"
            )
        unknown = sorted(set(self.reward_weights) - set(REWARD_NAMES))
        if unknown:
            raise SpecError("reward_weights", f"no reward named {', '.join(unknown)} (names: {', '.join(REWARD_NAMES)})")
        unused = sorted(set(self.reward_weights) - set(self.reward_names()))
        if unused:
            raise SpecError("reward_weights", f"{', '.join(unused)} is not switched on: give its setting, or drop its weight")
        rollouts, n = self.batch_size * self.grad_accum, self.num_generations
        if rollouts % n:
            lower, upper = (rollouts // n) * n, (rollouts // n + 1) * n
            sizes = " or ".join(str(x // self.grad_accum) for x in (lower, upper) if x and x % self.grad_accum == 0)
            divisors = [d for d in range(2, rollouts + 1) if rollouts % d == 0]
            raise SpecError(
                "num_generations", f"{n} does not divide the {rollouts} answers of a step (batch_size {self.batch_size} "
                f"x grad_accum {self.grad_accum}): use batch_size {sizes or n}, or num_generations "
                f"{', '.join(map(str, divisors[:6])) or 'of at least 2 with a larger batch'}"
            )
        return self

    def reward_names(self) -> list[str]:
        """The rewards switched on, in REWARD_NAMES order."""
        on = {
            "length": self.target_length > 0, "format": bool(self.format_regex), "contains": bool(self.contains),
            "avoids": bool(self.avoids), "match": bool(self.match), "file": bool(self.reward_file),
            "model": bool(self.reward_model.strip()),
        }
        return [name for name in REWARD_NAMES if on[name]]

    def check_inputs(self) -> None:
        try:
            row = models.find(self.model)
        except models.ModelError:
            row = None  # named when the job's inputs are resolved
        if row is not None and models.is_reward_model(row):
            raise SpecError("model", f"'{row.name}' is a reward model: GRPO trains a policy (a language model)")
        if self.reward_model.strip():
            try:
                rm = models.find(self.reward_model)
            except models.ModelError:
                rm = None
            if rm is not None and not models.is_reward_model(rm):
                raise SpecError("reward_model", f"'{rm.name}' is not a reward model (train one: python -m core train reward)")
        try:
            data_row = datasets.find(self.dataset)
        except datasets.DatasetError:
            data_row = None
        if self.match and data_row is not None and data_row.format == "prompt":
            if "answer" not in ((data_row.details or {}).get("mapping") or {}):
                raise SpecError("match", f"'{data_row.name}' has no answer column to match against: import prompts with an answer")
        if self.reward_file and row is not None and data_row is not None:
            tried = try_rewards(self, generate_answers=False)  # confined, on the data set's own answers
            if "error" in tried:
                raise SpecError("reward_file", f"it fails on sample rows: {tried['error']}")
        super().check_inputs()

    def title(self) -> str:
        resumed = f" (resuming job {self.resume_from_job})" if self.resume_from_job else ""
        return (f"GRPO {self.method} of '{self.model}' on '{self.dataset}' with {', '.join(self.reward_names())} "
                f"-> '{self.output_name}'{resumed}")


def run_grpo(spec: GRPOSpec, run: Run) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from core.hardware import device as current_device

    start = models.get(run.model_ids[1])
    reward_model_row = models.get(run.model_ids[2]) if spec.reward_model.strip() else None
    data_row = datasets.get(run.dataset_ids[0])
    if data_row.format != "prompt":  # checked at submit; the row may have been replaced since
        raise BadInput(f"dataset: '{data_row.name}' is {data_row.format} data; GRPO needs prompt data")
    device = current_device()
    torch.manual_seed(spec.seed)
    run.progress(0, None, f"loading '{start.name}' ({spec.method}) on {device}", force=True)

    tokenizer = AutoTokenizer.from_pretrained(data_home() / start.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    splits = datasets.load(data_row)
    train = splits["train"].map(lambda row: {"prompt": prompt_example(row["prompt"], tokenizer)}, keep_in_memory=True)
    funcs, weights, facts = rewards.build(spec, run.dir, reward_model_row)
    recorder = rewards.Recorder(funcs, weights, keep=ROLLOUTS_PER_STEP)
    model = load_model(spec, start, device)
    run.check_cancel()

    args = GRPOConfig(
        **trainer_args(spec, run, device),
        num_generations=spec.num_generations,
        max_completion_length=spec.max_completion_length,
        temperature=spec.temperature,
        loss_type=spec.loss_type,
        beta=spec.beta,
        scale_rewards=spec.scale_rewards,
        reward_weights=weights,
    )
    callback = make_callback(run, spec.logged)

    class Rollouts(TrainerCallback):
        """The rollouts of each step, stored with the step they trained."""

        def on_log(self, args, state, control, logs=None, **kw):
            rows = recorder.take()
            if rows and run.is_main:
                store_samples(run.job_id, state.global_step, rows)

    trainer = GRPOTrainer(
        model=model, reward_funcs=recorder.wrapped, args=args, train_dataset=train, processing_class=tokenizer,
        callbacks=[callback, Rollouts()],
    )
    output = fit(trainer, callback, spec, run, start, data_row, device, has_eval=False)
    if not run.is_main:
        return {}
    facts_saved = save_policy(spec, run, trainer, tokenizer, start)
    history = trainer.state.log_history
    facts_saved["details"].update(rewards=spec.reward_names(), reward_weights=weights, final_reward=last_logged(history, "reward"), **facts)
    register(spec, run, trainer, facts_saved, start, data_row, model_card(spec, start, data_row, trainer, run.job_id, facts))
    return {**result(run, trainer, output), "final_reward": last_logged(history, "reward"), **facts}


def model_card(spec: GRPOSpec, start, data_row, trainer, job_id: int, facts: dict[str, Any]) -> str:
    history = trainer.state.log_history
    kind = "LoRA adapter" if spec.method != "full" else "full model"
    used = ", ".join(f"{n} (weight {spec.reward_weights.get(n, 1.0)})" for n in spec.reward_names())
    file_line = f"- reward file `{facts['reward_file']['path']}`, sha256 `{facts['reward_file']['sha256']}`\n" if "reward_file" in facts else ""
    return (
        f"# {spec.output_name}\n\n"
        f"A {kind} aligned with GRPO ({spec.loss_type} loss, {spec.num_generations} answers per prompt, beta {spec.beta}) "
        f"from **{start.name}** on the prompt data set **{data_row.name}** (fingerprint `{data_row.fingerprint}`) by job "
        f"{job_id} of the LLM Development Platform.\n\n"
        f"- rewards: {used}\n{file_line}"
        f"- steps: {trainer.state.global_step}; final mean reward: {last_logged(history, 'reward')}\n"
        f"- learning rate {spec.lr()}, batch {spec.batch_size} x {spec.grad_accum}, answers up to "
        f"{spec.max_completion_length} tokens at temperature {spec.temperature}, seed {spec.seed}\n"
        + reproduce(spec)
    )


# --- "Try it on 3 rows": the user's reward file called exactly as a run calls it ----------------------


def try_rewards(spec: GRPOSpec, generate_answers: bool = True, rows: int = rewards.TRY_ROWS) -> dict[str, Any]:
    """The spec's reward file on the first `rows` prompts of its data set, called as
    TRL calls it in a run (core/rewards.py says with what), confined: prompts laid
    out for the policy, answers the policy writes itself (`generate_answers`; else
    each row's answer column, or a stand-in text, which is what the check at submit
    uses). {"rows": [{prompt, answer, score}], "types": {argument: how it arrives}}
    or {"error": what failed, where}."""
    import tempfile
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from core.access.sandbox import UserCodeError

    start, data_row = models.find(spec.model), datasets.find(spec.dataset)
    split = datasets.load(data_row)["train"]
    sample = list(split.select(range(min(rows, len(split)))))
    if generate_answers:
        from core.inference import generate

        model, tokenizer = generate.load(start)
        texts = []
        for i, row in enumerate(sample):
            text = generate.prompt_text(tokenizer, [{"role": "user", "content": row["prompt"]}])
            settings = generate.Settings(max_new_tokens=spec.max_completion_length, temperature=spec.temperature, seed=spec.seed + i)
            texts.append("".join(generate.stream(model, tokenizer, text, settings)))
    else:
        tokenizer = AutoTokenizer.from_pretrained(data_home() / start.path)
        texts = [str(row.get("answer") or "an example answer") for row in sample]
    call = dict(
        prompts=[prompt_example(row["prompt"], tokenizer) for row in sample],
        completions=[answer_example(t, tokenizer) for t in texts],
        completion_ids=[tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts],
        trainer_state=SimpleNamespace(global_step=0, max_steps=spec.max_steps, epoch=0.0),
        **{k: [row.get(k) for row in sample] for k in sample[0] if k != "prompt"},
    )
    with tempfile.TemporaryDirectory(prefix="llmdev-try-") as folder:
        try:
            func = rewards.from_file(Path(spec.reward_file), Path(folder))
            try:
                scores = func(**call)
            finally:
                func.close()
        except UserCodeError as exc:
            name = Path(spec.reward_file).name
            return {"error": f"{name}, line {exc.line}: {exc.what}" if exc.line else f"{name}: {exc.what}"}
        except ValueError as exc:  # what it returned is not one reward per answer
            return {"error": f"{Path(spec.reward_file).name}: {exc}"}
    chat = bool(tokenizer.chat_template)
    types = {
        "prompts": "a list of chat messages [{role: user, content: str}] per prompt" if chat else "a str per prompt (the instruction layout)",
        "completions": "a list of one chat message [{role: assistant, content: str}] per answer" if chat else "a str per answer",
        "completion_ids": "a list of token ids (int) per answer",
        "trainer_state": "global_step, max_steps, epoch",
        **{k: f"{type(v[0]).__name__ if v and v[0] is not None else 'None'} per answer (the data set's {k!r} column)"
           for k, v in call.items() if k not in ("prompts", "completions", "completion_ids", "trainer_state")},
    }
    return {"rows": [{"prompt": row["prompt"], "answer": t, "score": v} for row, t, v in zip(sample, texts, scores)], "types": types}


def try_in_subprocess(spec: GRPOSpec, by: Actor, timeout_s: float = 600) -> dict[str, Any]:
    """`try_rewards` with the policy's own answers, in a separate process (the app
    loads no model for it), for `by`: a member or more; in a shared app only where user
    code can be confined (as for a run: core/jobs/lifecycle.py). Denied otherwise."""
    import json
    import subprocess
    import sys

    from core.jobs import lifecycle

    try:
        accounts.require(by, "member", "trying a reward file")
        lifecycle.check_user_code(spec, by)
    except accounts.Denied as exc:
        audit.record(by, "try reward file", Path(spec.reward_file).name, str(exc), ok=False)
        raise
    try:
        done = subprocess.run([sys.executable, "-m", "core.training.grpo", "try"], input=json.dumps(spec.to_dict()),
                              capture_output=True, text=True, timeout=timeout_s, cwd=Path(__file__).resolve().parents[2])
    except subprocess.TimeoutExpired:
        return {"error": f"writing and scoring the answers took more than {timeout_s:g} s"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        said = (done.stderr.strip() or done.stdout.strip() or f"no output (exit {done.returncode})").splitlines()
        return {"error": masking.one_line(said[-1], 500)}


if __name__ == "__main__":  # python -m core.training.grpo try < SPEC.json  (what try_in_subprocess runs)
    import json
    import sys

    data = json.loads(sys.stdin.read())
    data.pop("kind", None)
    try:
        print(json.dumps(try_rewards(GRPOSpec(**data)), default=str))
    except (ValueError, LookupError) as exc:
        print(json.dumps({"error": str(exc)}))
