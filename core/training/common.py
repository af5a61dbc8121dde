"""What the training kinds share: the spec traits and fields every training run
has, loading the model to train (full, LoRA, QLoRA; a LoRA adapter as the
starting point), the one TrainerCallback (progress and metrics to the database,
stop and pause), DDP agreement on a stop, checkpoints, resume, and the run record.

A training kind is one file beside this one (sft, reward, dpo, grpo, ppo): its
spec subclasses `TrainSpec` (its traits say which metrics it logs and charts),
its run function builds the TRL trainer with `make_callback(run, spec)`, calls
`write_run_record`, trains, saves, registers.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from core.jobs import lifecycle as jobs
from core.jobs.run import BadInput, Run
from core.spec import Name, Ref, Spec, SpecError

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes")
# What the SFT trainer logs that we chart (the end-of-training summary is left out).
LOGGED = {
    "loss": "train_loss",
    "eval_loss": "eval_loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "mean_token_accuracy": "token_accuracy",
    "eval_mean_token_accuracy": "eval_token_accuracy",
    "num_tokens": "num_tokens",
}


class TrainSpec(Spec):
    """What every training kind is: it trains a model from a registered model on a
    registered data set (DDP, pause and resume, training charts), makes a model,
    and can continue an earlier run. The fields all kinds share come first; a
    kind adds its own."""

    trains: ClassVar[bool] = True
    resumes: ClassVar[bool] = True
    output: ClassVar[str] = "model"
    output_field: ClassVar[str] = "output_name"
    busy: ClassVar[str] = "training"
    input_models: ClassVar[tuple[str, ...]] = ("model",)
    input_datasets: ClassVar[tuple[str, ...]] = ("dataset",)
    trailing_fields: ClassVar[tuple[str, ...]] = ("seed", "resume_from_job", "processes", "threads")
    # trainer log key -> the metric name stored and charted
    logged: ClassVar[dict[str, str]] = LOGGED
    # the run's charts: (title, metric names); the first is drawn live at every step
    panels: ClassVar[list[tuple[str, tuple[str, ...]]]] = [
        ("Loss", ("train_loss", "eval_loss")),
        ("Learning rate", ("learning_rate",)),
        ("Gradient norm", ("grad_norm",)),
        ("Tokens / s", ("tokens_per_s",)),
        ("Peak memory (MB)", ("peak_memory_mb",)),
        ("Token accuracy", ("token_accuracy", "eval_token_accuracy")),
    ]
    # peak learning rate when the spec leaves it at 0: (full, LoRA/QLoRA)
    default_lr: ClassVar[tuple[float, float]] = (2e-5, 2e-4)
    # form starting points: "quick" trains the starter visibly in minutes on a CPU
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    model: Ref
    """Model to start from: name or id."""
    dataset: Ref
    """Data set: name or id."""
    output_name: Name
    """Name of the new model (an adapter for lora/qlora, a full model for full)."""
    method: Literal["full", "lora", "qlora"] = "lora"
    """full fine-tuning, LoRA, or QLoRA (4-bit NF4 base + LoRA)."""
    max_steps: int = Field(0, ge=0)
    """Stop after this many optimizer steps (0: train for `epochs`)."""
    epochs: float = Field(1.0, ge=0, le=1000)
    """Passes over the training split (when max_steps is 0)."""
    learning_rate: float = Field(0.0, ge=0, le=1)
    """Peak learning rate (0: the kind's default for the method)."""
    batch_size: int = Field(4, ge=1, le=4096)
    """Examples per device per step."""
    grad_accum: int = Field(1, ge=1, le=4096)
    """Gradient accumulation steps (effective batch = batch_size x grad_accum)."""
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
    save_steps: int = Field(50, ge=1)
    """Write a resumable checkpoint every N steps."""
    keep_checkpoints: int = Field(2, ge=0)
    """How many of the latest checkpoints to keep (0: all, e.g. to evaluate each one)."""
    seed: int = Field(0, ge=0)
    """Seed for data order, dropout, sampling and adapter init."""
    resume_from_job: int = Field(0, ge=0)
    """Continue the run of this job from its latest checkpoint (set by `train resume`)."""
    processes: int = Field(0, ge=0)
    """Training processes: 0 = one per GPU when there are several (DDP under torchrun),
    else one; 2+ on a CPU runs DDP with the gloo backend."""

    @model_validator(mode="after")
    def _how_long(self) -> "TrainSpec":
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
        if self.method == "qlora" and self.runner == "local":  # on Ray the cluster's GPUs are checked
            from core.hardware import qlora_unavailable

            why = qlora_unavailable()
            if why:
                raise SpecError("method", f"QLoRA cannot run on this machine: {why}. Use lora instead, or run it on a Ray cluster with GPUs.")
        if self.resume_from_job:
            try:
                checkpoint_of(self.resume_from_job)
            except (BadInput, LookupError) as exc:
                raise SpecError("resume_from_job", str(exc)) from None

    def lr(self) -> float:
        return self.learning_rate or self.default_lr[self.method != "full"]

    def resolved(self) -> dict[str, tuple[Any, str]]:
        if self.learning_rate:
            return {}
        method = "full fine-tuning" if self.method == "full" else "LoRA and QLoRA"
        return {"learning_rate": (self.lr(), f"learning_rate 0 in the spec: {self.short_name().upper()}'s default for {method}")}

    def model_source(self) -> tuple[str, str]:
        return ("trained" if self.method == "full" else "adapter"), f"{self.short_name().upper()} ({self.method}) on {self.dataset}"

    def title(self) -> str:
        resumed = f" (resuming job {self.resume_from_job})" if self.resume_from_job else ""
        return f"{self.short_name().upper()} {self.method} of '{self.model}' on '{self.dataset}' -> '{self.output_name}'{resumed}"


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU allocator peak on CUDA, else max RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def load_model(spec: TrainSpec, row, device: str, reward_head: bool = False):
    """The model to train, from the registered model `row`:

    - full: its weights (an adapter is merged into its base first);
    - lora: a new LoRA on a full model; an adapter trains on as itself (its
      starting point: an SFT adapter aligned by DPO stays one adapter on the base);
    - qlora: the base in 4-bit NF4 with a new LoRA, or the adapter on it.

    `reward_head`: a sequence-classification model with one score instead of the
    language-model head (a reward model; its new head trains in full under LoRA).
    Seed first: the head is initialised at random."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    from core.models import registry as models
    from storage.db import data_home

    adapter = data_home() / row.path if row.source == "adapter" else None
    base_path = data_home() / (models.get(row.parent_id).path if adapter else row.path)
    # fp32 on CPU: bf16 is 17-30x slower on CPUs without AMX (shared/NOTES.md)
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if spec.method == "qlora":
        import logging
        import os

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
        if device == "cuda":
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}  # each DDP rank its own GPU
    if reward_head:  # full or LoRA (RewardSpec refuses QLoRA)
        model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1, **kwargs)
        if adapter is not None:  # the adapter's language model, merged, under the new head
            tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype), adapter).merge_and_unload()
            model.load_state_dict(tuned.state_dict(), strict=False)  # all but the head (score vs lm_head)
            adapter = None
    else:
        model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    if spec.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=device == "cuda")
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter, is_trainable=spec.method != "full")
        if spec.method == "full":
            return model.merge_and_unload()
    elif spec.method != "full":
        targets = spec.lora_targets.strip()
        lora = LoraConfig(
            r=spec.lora_r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
            task_type="SEQ_CLS" if reward_head else "CAUSAL_LM",  # SEQ_CLS: the score head trains in full
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


def trainer_args(spec: TrainSpec, run: Run, device: str) -> dict[str, Any]:
    """The TrainingArguments every kind passes to its TRL config (theirs on top)."""
    import torch

    return dict(
        output_dir=str(run.dir / "checkpoints"),
        max_steps=spec.max_steps or -1,
        num_train_epochs=spec.epochs,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.lr(),
        lr_scheduler_type=spec.scheduler,
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
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


def make_callback(run: Run, logged: dict[str, str] = LOGGED):
    """One TrainerCallback: progress and the `logged` metrics to the database; a
    stop request ends training (with a checkpoint when it is a pause)."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.last_time: Optional[float] = None
            self.last_tokens: Optional[float] = None
            self.stopped_at: Optional[int] = None
            self.pause = False

        def on_train_begin(self, args, state, control, **kw):
            run.progress(state.global_step, state.max_steps, "training", force=True)

        def on_step_end(self, args, state, control, **kw):
            # after the last step the trainer still evaluates and writes a checkpoint: say so
            if state.global_step >= state.max_steps:
                what = [w for w, due in (("evaluation", control.should_evaluate), ("checkpoint", control.should_save)) if due]
                message = f"training done: final {' and '.join(what)}" if what else "training done"
                run.progress(state.global_step, state.max_steps, message, force=True)
            else:
                run.progress(state.global_step, state.max_steps, f"step {state.global_step} of {state.max_steps}")
            mode = _agreed_stop(run.stop_requested() if run.is_main or run.stop.is_set() else None, run.world_size)
            if mode and self.stopped_at is None:
                self.stopped_at = state.global_step
                self.pause = mode == "pause"
                control.should_training_stop = True
                control.should_save = self.pause  # the checkpoint a resume starts from
                control.should_evaluate = False

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or (state.is_world_process_zero is False):
                return
            if "train_runtime" in logs:  # the end-of-training summary
                return
            now = time.monotonic()
            values = {logged[k]: v for k, v in logs.items() if k in logged and isinstance(v, (int, float))}
            tokens = logs.get("num_tokens") if "loss" in logs else None
            if tokens is not None and self.last_tokens is not None and now > self.last_time:
                values["tokens_per_s"] = (tokens - self.last_tokens) / (now - self.last_time)
            if tokens is not None:
                self.last_tokens, self.last_time = tokens, now
            values["peak_memory_mb"] = peak_memory_mb()
            run.metrics(state.global_step, values)

    return ProgressCallback()


def fit(trainer, callback, spec: TrainSpec, run: Run, start, data_row, device: str, has_eval: bool):
    """Write the run record, train (from the checkpoint of the run this one
    resumes), end as paused or cancelled when asked, evaluate once more at the
    end when there is a validation split; returns trainer.train's output."""
    if run.is_main:
        write_run_record(run, spec, trainer, start, data_row)
    resume = str(checkpoint_of(spec.resume_from_job)) if spec.resume_from_job else None
    if resume:
        print(f"resuming from {resume}", flush=True)
        # TRL's token counter is not in the checkpoint: carry it on, so tokens/s and totals continue
        state = json.loads((Path(resume) / "trainer_state.json").read_text())
        trainer._total_train_tokens = last_logged(state.get("log_history", []), "num_tokens") or 0
    print(f"rank {run.rank} of {run.world_size} training on {device}", flush=True)
    output = trainer.train(resume_from_checkpoint=resume)
    stopped(callback, run)
    evaluated = [h["step"] for h in trainer.state.log_history if "eval_loss" in h]
    if has_eval and (not evaluated or evaluated[-1] != trainer.state.global_step):
        run.progress(trainer.state.global_step, trainer.state.max_steps, "final evaluation", force=True)
        trainer.evaluate()  # logged through the callback (a collective under DDP: every rank)
    return output


PROBE = [[5, 6, 7, 8, 9, 10, 11, 12]]  # token ids whose logits a job records, to check reloads


def save_policy(spec: TrainSpec, run: Run, trainer, tokenizer, start) -> dict[str, Any]:
    """Save a trained language model (the adapter, or the full model) with the
    tokenizer it trained with, record the logits of PROBE (a reload must give
    them), and return its facts for `register`. A full model is reloaded and asked
    a test question first."""
    import shutil

    import torch

    from core.models import registry as models
    from core.models.weights import describe, describe_adapter

    out_dir = models.partial_dir(run.output_model_id)
    step, total = trainer.state.global_step, trainer.state.max_steps
    run.progress(step, total, "saving the model", force=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    model = trainer.model
    if spec.method != "full":
        model.save_pretrained(out_dir, selected_adapters=["default"])  # not a frozen reference copy (DPO's "ref")
    else:
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)  # the chat template and EOS used in training
    model.eval()
    with torch.no_grad():
        probe = model(input_ids=torch.tensor(PROBE, device=model.device)).logits[0, -1, :16]
    (run.dir / "probe.json").write_text(json.dumps({"input_ids": PROBE, "logits": probe.float().cpu().tolist()}))
    if spec.method == "full":
        run.progress(step, total, "checking the saved model: loading it and answering a test question", force=True)
        return dict(describe(out_dir, sanity=True), source="trained")
    base = models.get(start.parent_id) if start.source == "adapter" else start
    return dict(describe_adapter(out_dir, base), source="adapter")


def stopped(callback, run: Run) -> None:
    """After training: end as paused (with the checkpoint just written) or
    cancelled when the callback stopped it on request."""
    from core.jobs.run import Cancelled

    if callback.stopped_at is None:
        return
    if callback.pause:
        ckpt = checkpoint_of(run.job_id)
        raise Cancelled(
            f"paused at step {callback.stopped_at}: resume to continue",
            {"paused": True, "step": callback.stopped_at, "checkpoint": str(ckpt)},
        )
    raise Cancelled(f"cancelled at step {callback.stopped_at}")


def register(spec: TrainSpec, run: Run, trainer, facts: dict[str, Any], start, data_row, card: str) -> None:
    """Record a saved model (its facts from core.models.weights.describe*) with
    its lineage, the run's numbers and a model card, and publish it. The parent
    is the model it started from; an adapter that trained on as itself keeps its
    base as parent (what it loads on) and names its starting point."""
    from core.models import registry as models

    out_dir = models.partial_dir(run.output_model_id)
    continued = start.source == "adapter" and facts["source"] == "adapter"
    facts["parent_id"] = start.parent_id if continued else start.id
    facts["details"].update(
        method=spec.method,
        dataset=data_row.name,
        dataset_fingerprint=data_row.fingerprint,
        steps=trainer.state.global_step,
        final_train_loss=last_logged(trainer.state.log_history, "loss"),
        final_eval_loss=last_logged(trainer.state.log_history, "eval_loss"),
        spec=spec.to_dict(),
        **({"started_from": {"id": start.id, "name": start.name}} if continued else {}),
    )
    run.progress(trainer.state.global_step, trainer.state.max_steps, "registering the model", force=True)
    (out_dir / "README.md").write_text(card)
    models.publish(run.output_model_id, facts)


def result(run: Run, trainer, output) -> dict[str, Any]:
    """What a training job returns."""
    return {
        "model_id": run.output_model_id,
        "steps": trainer.state.global_step,
        "processes": run.world_size,
        # throughput of the training loop alone (bench/ compares it with plain TRL)
        "train_runtime_s": output.metrics.get("train_runtime") if output is not None else None,
        "train_tokens": last_logged(trainer.state.log_history, "num_tokens"),
        "peak_memory_mb": peak_memory_mb(),
    }


def reproduce(spec: TrainSpec) -> str:
    """The model card's last lines: the spec file that trains it again."""
    return (
        "\nReproduce with `python -m core run spec.yaml`:\n\n```yaml\n"
        + spec.with_resolved().model_copy(update={"resume_from_job": 0}).to_yaml()
        + "```\n"
    )


STOP_CODES = {None: 0, "cancel": 1, "pause": 2}


def _agreed_stop(mode: Optional[str], world_size: int) -> Optional[str]:
    """Under DDP every rank must stop at the same step: rank 0 reads the request,
    all ranks take the strongest one (an all-reduce of a single number)."""
    if world_size == 1:
        return mode
    import os

    import torch
    import torch.distributed as dist

    if os.getppid() == 1:  # torchrun is gone (the worker was killed): do not train on alone
        raise SystemExit("the torchrun launcher is gone; stopping")
    # NCCL reduces GPU tensors only; gloo CPU ones
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([STOP_CODES[mode]], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return {0: None, 1: "cancel", 2: "pause"}[int(flag.item())]


def run_checkpoints(job_id: int) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of a run and of the runs it
    resumed, in step order. Complete = trainer_state.json is there (transformers
    writes it last)."""
    found: dict[int, Path] = {}
    seen: set[int] = set()
    current: Optional[int] = job_id
    while current and current not in seen:
        seen.add(current)
        folder = jobs.run_dir(current) / "checkpoints"
        for ckpt in folder.glob("checkpoint-*") if folder.is_dir() else []:
            step = ckpt.name.split("-")[-1]
            if step.isdigit() and (ckpt / "trainer_state.json").is_file():
                found.setdefault(int(step), ckpt)  # a later run's copy of a step wins
        try:
            current = jobs.get(current).resumed_from
        except jobs.JobNotFound:  # the older run's row is gone: no older checkpoints
            current = None
    return sorted(found.items())


def checkpoint_of(job_id: int) -> Path:
    """The latest complete checkpoint of a run, or of the runs it resumed."""
    found = run_checkpoints(job_id)
    if not found:
        raise BadInput(f"job {job_id} left no complete checkpoint to resume from")
    return found[-1][1]


def has_checkpoint(job_id: int) -> bool:
    try:
        checkpoint_of(job_id)
        return True
    except BadInput:
        return False


def last_logged(history: list[dict], key: str) -> Optional[float]:
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


def write_run_record(run: Run, spec: TrainSpec, trainer, base, data_row) -> None:
    """Everything needed to reproduce the run, next to its log."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    (run.dir / "training_args.json").write_text(trainer.args.to_json_string())
    (run.dir / "spec.yaml").write_text(spec.with_resolved().to_yaml())  # the values it ran with
    path = run.dir / "environment.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}  # the worker's thread choice
    path.write_text(
        json.dumps(
            {
                **earlier,
                "torch_threads_in_use": torch.get_num_threads(),
                "packages": versions,
                "python": platform.python_version(),
                "seed": spec.seed,
                "world_size": run.world_size,
                "base_model": {"id": base.id, "name": base.name},
                "dataset": {"id": data_row.id, "name": data_row.name, "fingerprint": data_row.fingerprint},
            },
            indent=2,
        )
    )


def resume(job_id: int, by=None) -> int:
    """Start a new job that continues a paused, cancelled or failed training run
    from its latest checkpoint (optimizer and scheduler state included), for `by`
    (the run's owner or an admin; default: the machine's owner)."""
    from core.access import accounts
    from core.kinds import spec_from_dict, traits

    old = jobs.get(job_id)
    accounts.require_change(by or accounts.terminal(), old.owner_id, f"job {job_id}", "resume")
    if not traits(old.kind).resumes:
        what = "training runs of other kinds" if traits(old.kind).trains else "training jobs"
        raise BadInput(f"job {job_id} is a {old.kind} job; only {what} resume")
    if old.status not in ("paused", "cancelled", "failed"):
        raise BadInput(f"job {job_id} is {old.status}; only a paused, cancelled or failed run resumes")
    checkpoint_of(job_id)
    data = dict(old.spec, resume_from_job=job_id)
    return jobs.submit(spec_from_dict(data), by=by)
