"""Reward models: a sequence-classification head (one score) trained on a
preference data set (prompt, chosen, rejected) with TRL's RewardTrainer, full or
LoRA. The result is a registered reward model that PPO, GRPO, the reward
evaluation and the score command read (core/inference/reward.py scores a pair
exactly as the trainer saw it).

    python -m core train reward --model NAME --dataset PREFS --output-name RM --max-steps 40 --wait
    python -m core score --reward-model RM --prompt "What is 2+2?" --response "4"
"""

from __future__ import annotations

import shutil
from typing import Any, ClassVar

from pydantic import Field, field_validator

from core.data import registry as datasets
from core.data.render import preference_example
from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.models.weights import describe
from core.spec import Ref
from core.training.common import TrainSpec, fit, last_logged, load_model, make_callback, register, reproduce, result, trainer_args
from storage.db import data_home

LOGGED = {
    "loss": "train_loss",
    "eval_loss": "eval_loss",
    "accuracy": "accuracy",
    "eval_accuracy": "eval_accuracy",
    "margin": "margin",
    "eval_margin": "eval_margin",
    "mean_reward": "mean_score",
    "eval_mean_reward": "eval_mean_score",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "num_tokens": "num_tokens",
}


class RewardSpec(TrainSpec):
    """A reward model: one score per (prompt, answer), trained to rank the chosen
    answer of each preference pair above the rejected one (TRL RewardTrainer)."""

    kind: ClassVar[str] = "reward"
    command: ClassVar[tuple[str, ...]] = ("train", "reward")
    aligns: ClassVar[str] = "Reward model"
    dataset_formats: ClassVar[tuple[str, ...]] = ("preference",)
    logged: ClassVar[dict[str, str]] = LOGGED
    panels: ClassVar[list[tuple[str, tuple[str, ...]]]] = [
        ("Loss", ("train_loss", "eval_loss")),
        ("Pairwise accuracy", ("accuracy", "eval_accuracy")),
        ("Margin (chosen - rejected)", ("margin", "eval_margin")),
        ("Mean score", ("mean_score", "eval_mean_score")),
        ("Learning rate", ("learning_rate",)),
        ("Gradient norm", ("grad_norm",)),
    ]
    default_lr: ClassVar[tuple[float, float]] = (1e-5, 1e-4)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(max_steps=40, batch_size=4, max_length=256, eval_steps=10, save_steps=20),
        "standard": dict(max_steps=0, epochs=1.0, batch_size=8, max_length=1024, eval_steps=100, save_steps=100),
    }

    dataset: Ref = Field(description="Preference data set (prompt, chosen, rejected): name or id.")
    max_length: int = Field(512, ge=16, le=131072)
    """Pairs with an answer longer than this many tokens (prompt included) are left out."""
    eval_steps: int = Field(0, ge=0)
    """Evaluate on the validation split every N steps (0: only at the end)."""
    center_rewards: float = Field(0.0, ge=0, le=1)
    """Pull the mean score towards 0 (TRL's center_rewards_coefficient; 0.01 is usual; 0: off)."""

    @field_validator("method")
    @classmethod
    def _not_4bit(cls, value: str) -> str:
        if value == "qlora":
            raise ValueError("a reward model trains with full or lora: it is saved as a plain model with its score head, "
                             "which a 4-bit base cannot give")
        return value

    def model_source(self) -> tuple[str, str]:
        return "trained", f"reward model ({self.method}) on {self.dataset}"  # saved merged: a full model

    def title(self) -> str:
        resumed = f" (resuming job {self.resume_from_job})" if self.resume_from_job else ""
        return f"Reward model ({self.method}) from '{self.model}' on '{self.dataset}' -> '{self.output_name}'{resumed}"


def run_reward(spec: RewardSpec, run: Run) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from core.hardware import device as current_device

    start = models.get(run.model_ids[1])
    data_row = datasets.get(run.dataset_ids[0])
    if data_row.format != "preference":  # checked at submit; the row may have been replaced since
        raise BadInput(f"dataset: '{data_row.name}' is {data_row.format} data; a reward model needs preference data")
    device = current_device()
    torch.manual_seed(spec.seed)  # the score head starts at random
    run.progress(0, None, f"loading '{start.name}' ({spec.method}) with a score head on {device}", force=True)

    tokenizer = AutoTokenizer.from_pretrained(data_home() / start.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    splits = datasets.load(data_row)

    def convert(split):
        return split.map(lambda row: preference_example(row, tokenizer), remove_columns=split.column_names, keep_in_memory=True)

    train = convert(splits["train"])
    evaluate = convert(splits["validation"]) if "validation" in splits else None
    model = load_model(spec, start, device, reward_head=True)
    model.config.pad_token_id = tokenizer.pad_token_id  # where the head reads the last token
    run.check_cancel()

    args = RewardConfig(
        **trainer_args(spec, run, device),
        max_length=spec.max_length,
        center_rewards_coefficient=spec.center_rewards or None,
        eval_strategy=("steps" if spec.eval_steps else "no") if evaluate is not None else "no",
        eval_steps=spec.eval_steps or None,
    )
    callback = make_callback(run, spec.logged)
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=evaluate, processing_class=tokenizer, callbacks=[callback]
    )
    if len(trainer.train_dataset) == 0:
        raise BadInput(f"max_length: every pair of '{data_row.name}' is longer than {spec.max_length} tokens; raise max_length")
    output = fit(trainer, callback, spec, run, start, data_row, device, evaluate is not None)
    if not run.is_main:
        return {}

    run.progress(trainer.state.global_step, trainer.state.max_steps, "saving the reward model", force=True)
    out_dir = models.partial_dir(run.output_model_id)
    shutil.rmtree(out_dir, ignore_errors=True)
    # a LoRA reward model is saved merged: PPO and GRPO read a plain model with its head
    final = trainer.model.merge_and_unload() if spec.method != "full" else trainer.model
    final.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    facts = describe(out_dir)
    facts["source"] = "trained"
    history = trainer.state.log_history
    facts["details"].update(
        task="reward",
        eval_accuracy=last_logged(history, "eval_accuracy"),
        eval_margin=last_logged(history, "eval_margin"),
    )
    register(spec, run, trainer, facts, start, data_row, model_card(spec, start, data_row, trainer, run.job_id))
    return {**result(run, trainer, output), "eval_accuracy": last_logged(history, "eval_accuracy")}


def model_card(spec: RewardSpec, start, data_row, trainer, job_id: int) -> str:
    history = trainer.state.log_history
    return (
        f"# {spec.output_name}\n\n"
        f"A reward model (one score per prompt and answer) trained from **{start.name}** ({spec.method}"
        f"{', saved merged' if spec.method != 'full' else ''}) on the preference data set **{data_row.name}** "
        f"(fingerprint `{data_row.fingerprint}`, {data_row.num_rows} rows) by job {job_id} of the LLM Development Platform.\n\n"
        f"- steps: {trainer.state.global_step}; validation pairwise accuracy: {last_logged(history, 'eval_accuracy')}; "
        f"mean margin: {last_logged(history, 'eval_margin')}\n"
        f"- learning rate {spec.lr()}, batch {spec.batch_size} x {spec.grad_accum}, max length {spec.max_length}, seed {spec.seed}\n"
        "- score an answer: `python -m core score --reward-model "
        f"'{spec.output_name}' --prompt '...' --response '...'`\n"
        + reproduce(spec)
    )
