"""Supervised fine-tuning (full, LoRA, QLoRA) with TRL's SFTTrainer, and merging
an adapter into its base. The pattern the alignment jobs copy: load, build the
TRL/peft objects, train with `ProgressCallback`, save, register.

    python -m core train spec.yaml --wait
    python -m core train resume JOB_ID --wait
    python -m core models merge ADAPTER --name NAME --wait
"""

from __future__ import annotations

import json
import platform
import resource
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from core import datasets, jobs, models
from core.run import BadInput, Cancelled, Run
from core.sft_format import SFT_FORMATS, training_example
from core.specs import SFTSpec
from storage.db import data_home

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes")
# What the trainer logs that we chart (the end-of-training summary is left out).
LOGGED = {
    "loss": "train_loss",
    "eval_loss": "eval_loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "mean_token_accuracy": "token_accuracy",
    "eval_mean_token_accuracy": "eval_token_accuracy",
    "num_tokens": "num_tokens",
}
PROBE = [[5, 6, 7, 8, 9, 10, 11, 12]]  # token ids whose logits the job records, to check reloads


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU allocator peak on CUDA, else max RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def make_callback(run: Run):
    """One TrainerCallback: progress and metrics to the database; a stop request
    ends training (with a checkpoint when it is a pause)."""
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
            values = {LOGGED[k]: v for k, v in logs.items() if k in LOGGED and isinstance(v, (int, float))}
            tokens = logs.get("num_tokens") if "loss" in logs else None
            if tokens is not None and self.last_tokens is not None and now > self.last_time:
                values["tokens_per_s"] = (tokens - self.last_tokens) / (now - self.last_time)
            if tokens is not None:
                self.last_tokens, self.last_time = tokens, now
            values["peak_memory_mb"] = peak_memory_mb()
            run.metrics(state.global_step, values)

    return ProgressCallback()


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


def _checkpoint_of(job_id: int) -> Path:
    """The latest complete checkpoint of a run, or of the runs it resumed."""
    found = run_checkpoints(job_id)
    if not found:
        raise BadInput(f"job {job_id} left no complete checkpoint to resume from")
    return found[-1][1]


def has_checkpoint(job_id: int) -> bool:
    try:
        _checkpoint_of(job_id)
        return True
    except BadInput:
        return False


def run_sft(spec: SFTSpec, run: Run) -> dict[str, Any]:
    import torch
    from datasets import DatasetDict
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from core.hardware import device as current_device

    out_id, base_id = run.model_ids[0], run.model_ids[1]
    base = models.get(base_id)
    data_row = datasets.get(run.dataset_ids[0])
    if data_row.format not in SFT_FORMATS:
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
        _write_run_record(run, spec, trainer, base, data_row)
    resume = str(_checkpoint_of(spec.resume_from_job)) if spec.resume_from_job else None
    if resume:
        print(f"resuming from {resume}", flush=True)
    print(f"rank {run.rank} of {run.world_size} training on {device}", flush=True)
    if resume:
        # TRL's token counter is not in the checkpoint: carry it on, so tokens/s and totals continue
        state = json.loads((Path(resume) / "trainer_state.json").read_text())
        trainer._total_train_tokens = _last(state.get("log_history", []), "num_tokens") or 0
    output = trainer.train(resume_from_checkpoint=resume)

    if callback.stopped_at is not None:
        if callback.pause:
            ckpt = _checkpoint_of(run.job_id)
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
        facts = describe_trained(out_dir)
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
        final_train_loss=_last(trainer.state.log_history, "loss"),
        final_eval_loss=_last(trainer.state.log_history, "eval_loss"),
        spec=spec.__dict__ | {"kind": spec.kind},
    )
    (out_dir / "README.md").write_text(model_card(spec, base, data_row, facts, run.job_id))
    models.publish(out_id, facts)
    return {
        "model_id": out_id,
        "steps": trainer.state.global_step,
        "processes": run.world_size,
        # throughput of the training loop alone (bench/bench_sft.py compares it with plain TRL)
        "train_runtime_s": output.metrics.get("train_runtime"),
        "train_tokens": _last(trainer.state.log_history, "num_tokens"),
        "peak_memory_mb": peak_memory_mb(),
    }


def _last(history: list[dict], key: str) -> Optional[float]:
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


def _write_run_record(run: Run, spec: SFTSpec, trainer, base, data_row) -> None:
    """Everything needed to reproduce the run, next to its log."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    (run.dir / "training_args.json").write_text(trainer.args.to_json_string())
    (run.dir / "spec.yaml").write_text(spec.to_yaml())
    (run.dir / "environment.json").write_text(
        json.dumps(
            {
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


def describe_trained(folder: Path) -> dict[str, Any]:
    from core.model_jobs import describe

    return describe(folder, sanity=True)


def describe_adapter(folder: Path, base) -> dict[str, Any]:
    """Facts for a LoRA adapter: the base's shape, the adapter's own size."""
    from safetensors import safe_open

    cfg = json.loads((folder / "adapter_config.json").read_text())
    n = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(f, framework="pt") as st:
            for key in st.keys():
                shape = st.get_slice(key).get_shape()
                count = 1
                for d in shape:
                    count *= d
                n += count
    return {
        "architecture": base.architecture,
        "model_type": base.model_type,
        "num_parameters": n,
        "context_length": base.context_length,
        "dtype": "float32",
        "vocab_size": base.vocab_size,
        "has_chat_template": base.has_chat_template,
        "details": {
            "adapter": "LoRA",
            "lora_r": cfg.get("r"),
            "lora_alpha": cfg.get("lora_alpha"),
            "target_modules": cfg.get("target_modules"),
            "base_parameters": base.num_parameters,
        },
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
        + "\nReproduce with `python -m core train spec.yaml`:\n\n```yaml\n"
        + SFTSpec(**{**spec.__dict__, "resume_from_job": 0}).to_yaml()
        + "```\n"
    )


# --- merge ----------------------------------------------------------------------------


def run_merge_adapter(spec, run: Run) -> dict[str, Any]:
    """Fold a LoRA adapter into its base: a plain full model folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_id, adapter_id = run.model_ids[0], run.model_ids[1]
    adapter = models.get(adapter_id)
    if adapter.source != "adapter" or not adapter.parent_id:
        raise BadInput(f"model: '{adapter.name}' is not a LoRA adapter")
    base = models.get(adapter.parent_id)
    run.progress(0, 3, f"loading '{base.name}' and the adapter", force=True)
    model = AutoModelForCausalLM.from_pretrained(data_home() / base.path, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, data_home() / adapter.path)
    run.check_cancel()
    run.progress(1, 3, "merging", force=True)
    merged = model.merge_and_unload()
    out_dir = models.partial_dir(out_id)
    shutil.rmtree(out_dir, ignore_errors=True)
    run.progress(2, 3, "saving", force=True)
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(data_home() / adapter.path).save_pretrained(out_dir)
    facts = describe_trained(out_dir)
    facts["details"]["merged_from"] = {"adapter": adapter.name, "base": base.name}
    facts["parent_id"] = adapter.id
    facts["source"] = "trained"
    models.publish(out_id, facts)
    return {"model_id": out_id}


# --- resume -----------------------------------------------------------------------------


def resume(job_id: int) -> int:
    """Start a new job that continues a paused, cancelled or failed SFT run from
    its latest checkpoint (optimizer and scheduler state included)."""
    from core.specs import spec_from_dict

    old = jobs.get(job_id)
    if old.kind != "sft":
        raise BadInput(f"job {job_id} is a {old.kind} job; only training jobs resume")
    if old.status not in ("cancelled", "failed"):
        raise BadInput(f"job {job_id} is {old.status}; only a paused, cancelled or failed run resumes")
    _checkpoint_of(job_id)
    data = dict(old.spec, resume_from_job=job_id)
    return jobs.submit(spec_from_dict(data))
