"""Supervised fine-tuning (full, LoRA, QLoRA) with TRL's SFTTrainer. The pattern
the alignment kinds copy: load, build the TRL/peft objects, train with the shared
callback (training/common.py), save, register.

    python -m core train sft --model NAME --dataset NAME --output-name OUT --max-steps 60 --wait
    python -m core train spec.yaml --wait
    python -m core train resume JOB_ID --wait
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from core.data import registry as datasets
from core.data.render import SFT_FORMATS, training_example
from core.jobs.run import BadInput, Cancelled, Run
from core.models import registry as models
from core.models.weights import describe, describe_adapter
from core.spec import Name, Ref, SpecError
from core.training.common import TrainSpec, checkpoint_of, last_logged, make_callback, peak_memory_mb, write_run_record
from storage.db import data_home

PROBE = [[5, 6, 7, 8, 9, 10, 11, 12]]  # token ids whose logits the job records, to check reloads
# Sensible starting points; "quick" trains the starter visibly in minutes on a CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(max_steps=60, batch_size=4, learning_rate=2e-4, max_length=256, eval_steps=20, save_steps=20),
    "standard": dict(max_steps=0, epochs=2.0, batch_size=8, learning_rate=1e-4, max_length=1024, eval_steps=100, save_steps=100),
}


class SFTSpec(TrainSpec):
    """Supervised fine-tuning of a registered model on a registered data set (TRL SFTTrainer)."""

    kind: ClassVar[str] = "sft"
    command: ClassVar[tuple[str, ...]] = ("train", "sft")
    input_models: ClassVar[tuple[str, ...]] = ("model",)
    input_datasets: ClassVar[tuple[str, ...]] = ("dataset",)
    dataset_formats: ClassVar[tuple[str, ...]] = SFT_FORMATS

    model: Ref
    """Base model: name or id."""
    dataset: Ref
    """Data set (text, instruction or chat): name or id."""
    output_name: Name
    """Name of the new model (an adapter for lora/qlora, a full model for full)."""
    method: Literal["full", "lora", "qlora"] = "lora"
    """full fine-tuning, LoRA, or QLoRA (4-bit NF4 base + LoRA)."""
    max_steps: int = Field(0, ge=0)
    """Stop after this many optimizer steps (0: train for `epochs`)."""
    epochs: float = Field(1.0, ge=0, le=1000)
    """Passes over the training split (when max_steps is 0)."""
    learning_rate: float = Field(0.0, ge=0, le=1)
    """Peak learning rate (0: 2e-4 for LoRA/QLoRA, 2e-5 for full)."""
    batch_size: int = Field(4, ge=1, le=4096)
    """Examples per device per step."""
    grad_accum: int = Field(1, ge=1, le=4096)
    """Gradient accumulation steps (effective batch = batch_size x grad_accum)."""
    max_length: int = Field(512, ge=16, le=131072)
    """Examples are truncated to this many tokens."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule."""
    weight_decay: float = Field(0.0, ge=0, le=1)
    """AdamW weight decay."""
    lora_r: int = Field(8, ge=1, le=1024)
    """LoRA rank."""
    lora_alpha: int = Field(16, ge=1, le=4096)
    """LoRA scaling (alpha / r multiplies the update)."""
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA path."""
    lora_targets: str = "all-linear"
    """Modules LoRA adapts: "all-linear" or a comma-separated list like "q_proj,v_proj"."""
    eval_steps: int = Field(0, ge=0)
    """Evaluate on the validation split every N steps (0: only at the end)."""
    save_steps: int = Field(50, ge=1)
    """Write a resumable checkpoint every N steps."""
    keep_checkpoints: int = Field(2, ge=0)
    """How many of the latest checkpoints to keep (0: all, e.g. to evaluate each one)."""
    packing: bool = False
    """Pack several short examples into one sequence (faster on short data)."""
    completion_only: bool = True
    """Loss on the answer only (instruction and chat data); off = loss on the whole text."""

    @field_validator("method")
    @classmethod
    def _method_runs_here(cls, value: str) -> str:
        if value == "qlora":
            from core.hardware import qlora_unavailable

            why = qlora_unavailable()
            if why:
                raise ValueError(f"QLoRA cannot run on this machine: {why}. Use lora instead.")
        return value

    @model_validator(mode="after")
    def _how_long(self) -> "SFTSpec":
        if self.max_steps == 0 and not self.epochs > 0:
            raise SpecError("epochs", "give epochs > 0 or max_steps")
        return self

    @field_validator("lora_targets")
    @classmethod
    def _targets(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError('give "all-linear" or module names like "q_proj,v_proj"')
        return value

    def check_inputs(self) -> None:
        try:
            row = models.find(self.model)
        except models.ModelError:
            row = None  # a model that is not there is named when the job's inputs are resolved
        if row is not None and row.source == "adapter":
            raise SpecError(
                "model", f"'{row.name}' is a LoRA adapter: train from a full model (its base), or merge it first "
                f"(python -m core models merge {shlex.quote(row.name)} --name NEW_NAME)"
            )
        if self.resume_from_job:
            try:
                checkpoint_of(self.resume_from_job)
            except (BadInput, LookupError) as exc:
                raise SpecError("resume_from_job", str(exc)) from None

    def lr(self) -> float:
        return self.learning_rate or (2e-5 if self.method == "full" else 2e-4)

    def model_source(self) -> tuple[str, str]:
        return ("trained" if self.method == "full" else "adapter"), f"SFT ({self.method}) on {self.dataset}"

    def title(self) -> str:
        resumed = f" (resuming job {self.resume_from_job})" if self.resume_from_job else ""
        return f"SFT {self.method} of '{self.model}' on '{self.dataset}' -> '{self.output_name}'{resumed}"


def _load_base(spec: SFTSpec, path: Path, device: str):
    """The model to train: plain (full), with a LoRA adapter, or 4-bit + LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    # fp32 on CPU: bf16 is 17-30x slower on CPUs without AMX (shared/NOTES.md)
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if spec.method == "qlora":
        import logging

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
        if device == "cuda":
            import os

            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}  # each DDP rank its own GPU
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if spec.method == "full":
        return model
    if spec.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=device == "cuda")
    targets = spec.lora_targets.strip()
    lora = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise BadInput(f"lora_targets {targets!r}: {exc}") from None
    if device == "cpu":
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()  # TRL/peft leave LoRA weights in bf16 on a 4-bit base
    return model


def run_sft(spec: SFTSpec, run: Run) -> dict[str, Any]:
    import torch
    from datasets import DatasetDict
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from core.hardware import device as current_device

    out_id, base_id = run.model_ids[0], run.model_ids[1]
    base = models.get(base_id)
    data_row = datasets.get(run.dataset_ids[0])
    if data_row.format not in SFT_FORMATS:  # checked at submit; the row may have been replaced since
        raise BadInput(f"dataset: '{data_row.name}' is {data_row.format} data; SFT needs text, instruction or chat")
    device = current_device()
    torch.manual_seed(spec.seed)
    run.progress(0, None, f"loading '{base.name}' ({spec.method}) on {device}", force=True)

    base_path = data_home() / base.path
    tokenizer = AutoTokenizer.from_pretrained(base_path)
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
    model = _load_base(spec, base_path, device)
    run.check_cancel()

    out_dir = models.partial_dir(out_id)
    ckpt_dir = run.dir / "checkpoints"
    args = SFTConfig(
        output_dir=str(ckpt_dir),
        max_steps=spec.max_steps or -1,
        num_train_epochs=spec.epochs,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.lr(),
        lr_scheduler_type=spec.scheduler,
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        max_length=spec.max_length,
        packing=spec.packing,
        completion_only_loss=spec.completion_only if fmt != "text" else None,
        eval_strategy=("steps" if spec.eval_steps else "no") if evaluate is not None else "no",
        eval_steps=spec.eval_steps or None,
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=spec.keep_checkpoints or None,
        logging_steps=1,
        seed=spec.seed,
        data_seed=spec.seed,
        report_to=[],
        disable_tqdm=True,
        # CPU: fp32, no gradient checkpointing (TRL's defaults are for GPUs)
        bf16=device == "cuda" and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=False,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        ddp_backend="gloo" if device == "cpu" and run.world_size > 1 else None,
        ddp_find_unused_parameters=False if run.world_size > 1 else None,
    )
    callback = make_callback(run)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=evaluate, processing_class=tokenizer, callbacks=[callback]
    )
    if run.is_main:
        write_run_record(run, spec, trainer, base, data_row)
    resume = str(checkpoint_of(spec.resume_from_job)) if spec.resume_from_job else None
    if resume:
        print(f"resuming from {resume}", flush=True)
    print(f"rank {run.rank} of {run.world_size} training on {device}", flush=True)
    if resume:
        # TRL's token counter is not in the checkpoint: carry it on, so tokens/s and totals continue
        state = json.loads((Path(resume) / "trainer_state.json").read_text())
        trainer._total_train_tokens = last_logged(state.get("log_history", []), "num_tokens") or 0
    output = trainer.train(resume_from_checkpoint=resume)

    if callback.stopped_at is not None:
        if callback.pause:
            ckpt = checkpoint_of(run.job_id)
            raise Cancelled(
                f"paused at step {callback.stopped_at}: resume to continue",
                {"paused": True, "step": callback.stopped_at, "checkpoint": str(ckpt)},
            )
        raise Cancelled(f"cancelled at step {callback.stopped_at}")
    evaluated = [h["step"] for h in trainer.state.log_history if "eval_loss" in h]
    if evaluate is not None and (not evaluated or evaluated[-1] != trainer.state.global_step):
        run.progress(trainer.state.global_step, trainer.state.max_steps, "final evaluation", force=True)
        trainer.evaluate()  # logged through the callback (a collective under DDP: every rank)
    if not run.is_main:
        return {}  # rank 0 saves, registers and reports

    run.progress(trainer.state.global_step, trainer.state.max_steps, "saving the model", force=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    trainer.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)  # the chat template and EOS used in training
    trainer.model.eval()
    with torch.no_grad():
        probe = trainer.model(input_ids=torch.tensor(PROBE, device=trainer.model.device)).logits[0, -1, :16]
    (run.dir / "probe.json").write_text(json.dumps({"input_ids": PROBE, "logits": probe.float().cpu().tolist()}))
    if spec.method == "full":
        run.progress(trainer.state.global_step, trainer.state.max_steps, "checking the saved model: loading it and answering a test question", force=True)
        facts = describe(out_dir, sanity=True)
        facts["source"] = "trained"
    else:
        facts = describe_adapter(out_dir, base)
        facts["source"] = "adapter"
    facts["parent_id"] = base.id
    facts["details"].update(
        method=spec.method,
        dataset=data_row.name,
        dataset_fingerprint=data_row.fingerprint,
        steps=trainer.state.global_step,
        final_train_loss=last_logged(trainer.state.log_history, "loss"),
        final_eval_loss=last_logged(trainer.state.log_history, "eval_loss"),
        spec=spec.to_dict(),
    )
    run.progress(trainer.state.global_step, trainer.state.max_steps, "registering the model", force=True)
    (out_dir / "README.md").write_text(model_card(spec, base, data_row, facts, run.job_id))
    models.publish(out_id, facts)
    return {
        "model_id": out_id,
        "steps": trainer.state.global_step,
        "processes": run.world_size,
        # throughput of the training loop alone (bench/bench_sft.py compares it with plain TRL)
        "train_runtime_s": output.metrics.get("train_runtime"),
        "train_tokens": last_logged(trainer.state.log_history, "num_tokens"),
        "peak_memory_mb": peak_memory_mb(),
    }


def model_card(spec: SFTSpec, base, data_row, facts: dict[str, Any], job_id: int) -> str:
    d = facts["details"]
    kind = "LoRA adapter" if spec.method != "full" else "fully fine-tuned model"
    return (
        f"# {spec.output_name}\n\n"
        f"A {kind} ({spec.method}) trained from **{base.name}** on the data set **{data_row.name}** "
        f"(fingerprint `{data_row.fingerprint}`, {data_row.num_rows} rows) by job {job_id} of the LLM Development Platform.\n\n"
        f"- steps: {d.get('steps')}; final train loss: {d.get('final_train_loss')}; final eval loss: {d.get('final_eval_loss')}\n"
        f"- learning rate {spec.lr()}, batch {spec.batch_size} x {spec.grad_accum}, max length {spec.max_length}, seed {spec.seed}\n"
        + (f"- LoRA r={spec.lora_r}, alpha={spec.lora_alpha}, dropout={spec.lora_dropout}, targets {spec.lora_targets}\n" if spec.method != "full" else "")
        + "\nReproduce with `python -m core run spec.yaml`:\n\n```yaml\n"
        + spec.model_copy(update={"resume_from_job": 0}).to_yaml()
        + "```\n"
    )


