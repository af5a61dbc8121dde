"""Direct preference optimisation: a policy trained on a preference data set
(prompt, chosen, rejected) to prefer the chosen answers more than a frozen
reference (the policy it started from) does, with TRL's DPOTrainer. No reward
model is needed.

    python -m core train dpo --model SFT_MODEL --dataset PREFS --output-name OUT --max-steps 40 --wait

The reference: under LoRA, the starting policy itself (TRL keeps a frozen copy
of the adapter it starts from, or switches a new adapter off); a full fine-tune
keeps a frozen copy of the starting weights in memory.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from core.data import registry as datasets
from core.data.render import preference_example
from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.spec import Ref, SpecError
from core.training.common import (
    TrainSpec, fit, last_logged, load_model, make_callback, register, reproduce, result, save_policy, trainer_args,
)
from storage.db import data_home

LOGGED = {
    "loss": "train_loss",
    "eval_loss": "eval_loss",
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "rewards/margins": "margin",
    "eval_rewards/margins": "eval_margin",
    "rewards/accuracies": "accuracy",
    "eval_rewards/accuracies": "eval_accuracy",
    "logps/chosen": "logp_chosen",
    "logps/rejected": "logp_rejected",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "num_tokens": "num_tokens",
}
# TRL 1.12's DPO losses that need nothing but the pairs (see DPOConfig.loss_type)
LOSS_TYPES = Literal[
    "sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm",
]


class DPOSpec(TrainSpec):
    """Direct preference optimisation of a policy on a preference data set (TRL DPOTrainer)."""

    kind: ClassVar[str] = "dpo"
    command: ClassVar[tuple[str, ...]] = ("train", "dpo")
    aligns: ClassVar[str] = "DPO (preference pairs, no reward model)"
    dataset_formats: ClassVar[tuple[str, ...]] = ("preference",)
    logged: ClassVar[dict[str, str]] = LOGGED
    panels: ClassVar[list[tuple[str, tuple[str, ...]]]] = [
        ("Loss", ("train_loss", "eval_loss")),
        ("Implicit rewards", ("reward_chosen", "reward_rejected")),
        ("Margin (chosen - rejected)", ("margin", "eval_margin")),
        ("Accuracy (chosen > rejected)", ("accuracy", "eval_accuracy")),
        ("Log-probability of the answers", ("logp_chosen", "logp_rejected")),
        ("Learning rate", ("learning_rate",)),
    ]
    default_lr: ClassVar[tuple[float, float]] = (1e-6, 5e-5)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(max_steps=40, batch_size=4, max_length=256, eval_steps=10, save_steps=20),
        "standard": dict(max_steps=0, epochs=1.0, batch_size=8, max_length=1024, eval_steps=100, save_steps=100),
    }

    model: Ref = Field(description="Policy to start from (often an SFT output; a LoRA adapter trains on as itself): name or id.")
    dataset: Ref = Field(description="Preference data set (prompt, chosen, rejected): name or id.")
    max_length: int = Field(512, ge=16, le=131072)
    """Prompt and answer are cut to this many tokens (the end of a long answer goes)."""
    eval_steps: int = Field(0, ge=0)
    """Evaluate on the validation split every N steps (0: only at the end)."""
    beta: float = Field(0.1, gt=0, le=10)
    """How far the policy may move from the reference (higher: closer to it; IPO's tau)."""
    loss_type: LOSS_TYPES = "sigmoid"
    """The DPO loss: sigmoid (the original), ipo, hinge (SLiC), robust, and TRL's other pairwise losses."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Assumed share of flipped preference labels (robust and conservative DPO; exo_pair needs > 0)."""

    @model_validator(mode="after")
    def _loss_needs(self) -> "DPOSpec":
        if self.loss_type == "exo_pair" and self.label_smoothing == 0:
            raise SpecError("label_smoothing", "exo_pair needs label_smoothing > 0 (e.g. 0.001)")
        return self

    def check_inputs(self) -> None:
        try:
            row = models.find(self.model)
        except models.ModelError:
            row = None  # named when the job's inputs are resolved
        if row is not None and models.is_reward_model(row):
            raise SpecError("model", f"'{row.name}' is a reward model: DPO trains a policy (a language model)")
        super().check_inputs()


def run_dpo(spec: DPOSpec, run: Run) -> dict[str, Any]:
    import copy

    import torch
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from core.hardware import device as current_device

    start = models.get(run.model_ids[1])
    data_row = datasets.get(run.dataset_ids[0])
    if data_row.format != "preference":  # checked at submit; the row may have been replaced since
        raise BadInput(f"dataset: '{data_row.name}' is {data_row.format} data; DPO needs preference data")
    device = current_device()
    torch.manual_seed(spec.seed)
    run.progress(0, None, f"loading '{start.name}' ({spec.method}) on {device}", force=True)

    tokenizer = AutoTokenizer.from_pretrained(data_home() / start.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    splits = datasets.load(data_row)

    def convert(split):
        return split.map(lambda row: preference_example(row, tokenizer), remove_columns=split.column_names, keep_in_memory=True)

    train = convert(splits["train"])
    evaluate = convert(splits["validation"]) if "validation" in splits else None
    model = load_model(spec, start, device)
    # the reference: a frozen copy of the starting weights (under LoRA TRL keeps the adapter's own copy)
    reference = copy.deepcopy(model).eval().requires_grad_(False) if spec.method == "full" else None
    run.check_cancel()

    args = DPOConfig(
        **trainer_args(spec, run, device),
        max_length=spec.max_length,
        beta=spec.beta,
        loss_type=[spec.loss_type],
        label_smoothing=spec.label_smoothing,
        eval_strategy=("steps" if spec.eval_steps else "no") if evaluate is not None else "no",
        eval_steps=spec.eval_steps or None,
    )
    callback = make_callback(run, spec.logged)
    trainer = DPOTrainer(
        model=model, ref_model=reference, args=args, train_dataset=train, eval_dataset=evaluate,
        processing_class=tokenizer, callbacks=[callback],
    )
    output = fit(trainer, callback, spec, run, start, data_row, device, evaluate is not None)
    if not run.is_main:
        return {}
    facts = save_policy(spec, run, trainer, tokenizer, start)
    history = trainer.state.log_history
    facts["details"].update(beta=spec.beta, loss_type=spec.loss_type, final_margin=last_logged(history, "rewards/margins"))
    register(spec, run, trainer, facts, start, data_row, model_card(spec, start, data_row, trainer, run.job_id))
    return {**result(run, trainer, output), "final_margin": last_logged(history, "rewards/margins")}


def model_card(spec: DPOSpec, start, data_row, trainer, job_id: int) -> str:
    history = trainer.state.log_history
    kind = "LoRA adapter" if spec.method != "full" else "full model"
    return (
        f"# {spec.output_name}\n\n"
        f"A {kind} aligned with DPO ({spec.loss_type} loss, beta {spec.beta}) from **{start.name}** on the preference data set "
        f"**{data_row.name}** (fingerprint `{data_row.fingerprint}`, {data_row.num_rows} rows) by job {job_id} of the "
        "LLM Development Platform. The reference was the starting policy.\n\n"
        f"- steps: {trainer.state.global_step}; final margin (chosen - rejected): {last_logged(history, 'rewards/margins')}; "
        f"accuracy: {last_logged(history, 'rewards/accuracies')}\n"
        f"- learning rate {spec.lr()}, batch {spec.batch_size} x {spec.grad_accum}, max length {spec.max_length}, seed {spec.seed}\n"
        + reproduce(spec)
    )
