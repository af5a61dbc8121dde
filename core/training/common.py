"""What the training kinds share: the spec traits and fields every training run
has, the one TrainerCallback (progress and metrics to the database, stop and
pause), DDP agreement on a stop, checkpoints, resume, and the run record.

A training kind is one file beside this one (sft.py; the alignment kinds land
here too): its spec subclasses `TrainSpec`, its run function builds the TRL
trainer with `make_callback(run)`, calls `write_run_record`, trains, saves.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from importlib import metadata
from pathlib import Path
from typing import ClassVar, Optional

from pydantic import Field

from core.jobs import lifecycle as jobs
from core.jobs.run import BadInput, Run
from core.spec import Spec

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


class TrainSpec(Spec):
    """What every training kind is: it trains (DDP, pause and resume, training
    charts), makes a model, and can continue an earlier run."""

    trains: ClassVar[bool] = True
    output: ClassVar[str] = "model"
    output_field: ClassVar[str] = "output_name"
    busy: ClassVar[str] = "training"
    trailing_fields: ClassVar[tuple[str, ...]] = ("seed", "resume_from_job", "processes", "threads")

    seed: int = Field(0, ge=0)
    """Seed for data order, dropout and adapter init."""
    resume_from_job: int = Field(0, ge=0)
    """Continue the run of this job from its latest checkpoint (set by `train resume`)."""
    processes: int = Field(0, ge=0)
    """Training processes: 0 = one per GPU when there are several (DDP under torchrun),
    else one; 2+ on a CPU runs DDP with the gloo backend."""


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
    (run.dir / "spec.yaml").write_text(spec.to_yaml())
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


def resume(job_id: int) -> int:
    """Start a new job that continues a paused, cancelled or failed training run
    from its latest checkpoint (optimizer and scheduler state included)."""
    from core.kinds import spec_from_dict, traits

    old = jobs.get(job_id)
    if not traits(old.kind).trains:
        raise BadInput(f"job {job_id} is a {old.kind} job; only training jobs resume")
    if old.status not in ("paused", "cancelled", "failed"):
        raise BadInput(f"job {job_id} is {old.status}; only a paused, cancelled or failed run resumes")
    checkpoint_of(job_id)
    data = dict(old.spec, resume_from_job=job_id)
    return jobs.submit(spec_from_dict(data))
