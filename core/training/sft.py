"""Supervised fine-tuning (full, LoRA, QLoRA) with TRL's SFTTrainer. The pattern
the alignment kinds copy: load, build the TRL/peft objects, train with the shared
callback (training/common.py), save, register.

    python -m core train sft --model NAME --dataset NAME --output-name OUT --max-steps 60 --wait
    python -m core train spec.yaml --wait
    python -m core train resume JOB_ID --wait
"""

from __future__ import annotations

import shlex
from typing import Any, ClassVar

from pydantic import Field

from core.data import registry as datasets
from core.data.render import SFT_FORMATS, training_example
from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.spec import Ref, SpecError
from core.training.common import (
    TrainSpec, fit, last_logged, load_model, make_callback, register, reproduce, result, save_policy, trainer_args,
)
from storage.db import data_home

# Sensible starting points; "quick" trains the starter visibly in minutes on a CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(max_steps=60, batch_size=4, learning_rate=2e-4, max_length=256, eval_steps=20, save_steps=20),
    "standard": dict(max_steps=0, epochs=2.0, batch_size=8, learning_rate=1e-4, max_length=1024, eval_steps=100, save_steps=100),
}


class SFTSpec(TrainSpec):
    """Supervised fine-tuning of a registered model on a registered data set (TRL SFTTrainer)."""

    kind: ClassVar[str] = "sft"
    command: ClassVar[tuple[str, ...]] = ("train", "sft")
    dataset_formats: ClassVar[tuple[str, ...]] = SFT_FORMATS
    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    dataset: Ref = Field(description="Data set (text, instruction or chat): name or id.")
    max_length: int = Field(512, ge=16, le=131072)
    """Examples are truncated to this many tokens."""
    eval_steps: int = Field(0, ge=0)
    """Evaluate on the validation split every N steps (0: only at the end)."""
    packing: bool = False
    """Pack several short examples into one sequence (faster on short data)."""
    completion_only: bool = True
    """Loss on the answer only (instruction and chat data); off = loss on the whole text."""

    def check_inputs(self) -> None:
        try:
            row = models.find(self.model)
        except models.ModelError:
            row = None  # a model that is not there is named when the job's inputs are resolved
        if row is not None and row.source == "adapter":
            raise SpecError(
                "model", f"'{row.name}' is a LoRA adapter: train from a full model (its base), or merge it first "
                f"(python -m core export merge --model {shlex.quote(row.name)} --name NEW_NAME)"
            )
        super().check_inputs()


def run_sft(spec: SFTSpec, run: Run) -> dict[str, Any]:
    import torch
    from datasets import DatasetDict
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from core.hardware import device as current_device

    base = models.get(run.model_ids[1])
    data_row = datasets.get(run.dataset_ids[0])
    if data_row.format not in SFT_FORMATS:  # checked at submit; the row may have been replaced since
        raise BadInput(f"dataset: '{data_row.name}' is {data_row.format} data; SFT needs text, instruction or chat")
    device = current_device()
    torch.manual_seed(spec.seed)
    run.progress(0, None, f"loading '{base.name}' ({spec.method}) on {device}", force=True)

    tokenizer = AutoTokenizer.from_pretrained(data_home() / base.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    splits: DatasetDict = datasets.load(data_row)
    fmt = data_row.format

    def convert(split):
        return split.map(
            lambda row: training_example(fmt, row, tokenizer, spec.completion_only),
            remove_columns=split.column_names,
            keep_in_memory=True,  # no cache files in the registered data set's folder
        )

    train = convert(splits["train"])
    evaluate = convert(splits["validation"]) if "validation" in splits else None
    model = load_model(spec, base, device)
    run.check_cancel()

    args = SFTConfig(
        **trainer_args(spec, run, device),
        max_length=spec.max_length,
        packing=spec.packing,
        completion_only_loss=spec.completion_only if fmt != "text" else None,
        eval_strategy=("steps" if spec.eval_steps else "no") if evaluate is not None else "no",
        eval_steps=spec.eval_steps or None,
    )
    callback = make_callback(run)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=evaluate, processing_class=tokenizer, callbacks=[callback]
    )
    output = fit(trainer, callback, spec, run, base, data_row, device, evaluate is not None)
    if not run.is_main:
        return {}  # rank 0 saves, registers and reports

    facts = save_policy(spec, run, trainer, tokenizer, base)
    register(spec, run, trainer, facts, base, data_row, model_card(spec, base, data_row, trainer, run.job_id))
    return result(run, trainer, output)


def model_card(spec: SFTSpec, base, data_row, trainer, job_id: int) -> str:
    history = trainer.state.log_history
    kind = "LoRA adapter" if spec.method != "full" else "fully fine-tuned model"
    return (
        f"# {spec.output_name}\n\n"
        f"A {kind} ({spec.method}) trained from **{base.name}** on the data set **{data_row.name}** "
        f"(fingerprint `{data_row.fingerprint}`, {data_row.num_rows} rows) by job {job_id} of the LLM Development Platform.\n\n"
        f"- steps: {trainer.state.global_step}; final train loss: {last_logged(history, 'loss')}; "
        f"final eval loss: {last_logged(history, 'eval_loss')}\n"
        f"- learning rate {spec.lr()}, batch {spec.batch_size} x {spec.grad_accum}, max length {spec.max_length}, seed {spec.seed}\n"
        + (f"- LoRA r={spec.lora_r}, alpha={spec.lora_alpha}, dropout={spec.lora_dropout}, targets {spec.lora_targets}\n" if spec.method != "full" else "")
        + reproduce(spec)
    )
