"""Run lm-evaluation-harness tasks on a loaded model, offline, with local task
data; and the evaluation job that does it.

    python -m core eval lm-eval --model NAME --task llmdev_basics --wait --json

    from core.evaluation import lm_eval
    from core.inference import generate
    from core.models import registry as models
    model, tokenizer = generate.load(models.find("tiny"))   # an adapter comes as a PeftModel
    result = lm_eval.run_tasks(model, tokenizer, ["llmdev_basics"], limit=10)
    result["metrics"]   # {"llmdev_basics/acc": 0.3, "llmdev_basics/acc_norm": 0.4}

Tasks are lm-eval YAML files: ours live in assets/lm_eval_tasks/, more folders
can be passed as `include_paths`. Their data must be local (`dataset_path: json`
with `dataset_kwargs: data_files:`); a relative data file is resolved against the
folder of its YAML, not the current directory. Built-in harness tasks whose data
sets are on the Hugging Face Hub are refused with a ValueError. Run with
HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 set before `datasets` is imported:
without them a hub task spends ~25 s in download retries before it fails.

The task folders are plain lm-eval tasks. The harness's own command reads a
relative data file against the current directory, so run it from the task's folder:

    cd assets/lm_eval_tasks/llmdev_basics
    lm_eval --model hf --model_args pretrained=MODEL_DIR --device cpu --include_path .. --tasks llmdev_basics

lm_eval is imported inside the functions: importing it takes seconds, and the UI
only needs `local_tasks()`.
"""

from __future__ import annotations

import functools
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Optional, Sequence

import yaml
from pydantic import Field, field_validator, model_validator

from core.access import paths
from core.evaluation.common import EvalSpec, finite
from core.format import jsonable
from core.inference import generate
from core.jobs.run import BadInput, Run, store_samples
from core.models import registry as models
from core.spec import SpecError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TASKS_DIR = Path(__file__).resolve().parents[2] / "assets" / "lm_eval_tasks"
# Means get a closed-form stderr; other aggregations (bleu, ...) are bootstrapped
# this many times (lm-eval's default, 100000, is slow on 2 cores).
BOOTSTRAP_ITERS = 1000
# Requests per progress report and cancel check, in batches.
BATCHES_PER_CHUNK = 4

Progress = Callable[[int, int, str], None]


def local_tasks(include_paths: Sequence[str | Path] = ()) -> list[str]:
    """Names of the tasks and groups in assets/lm_eval_tasks (and `include_paths`),
    read from the YAML files without importing lm_eval."""
    names = set()
    for root in _roots(include_paths):
        for path in sorted(root.glob("**/*.yaml")):
            cfg = _read_yaml(path)
            name = cfg.get("group") or cfg.get("task")
            if isinstance(name, str):
                names.add(name)
    return sorted(names)


def run_tasks(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str],
    *,
    include_paths: Sequence[str | Path] = (),
    limit: Optional[int] = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: Optional[Progress] = None,
    check_cancel: Optional[Callable[[], None]] = None,
) -> dict[str, Any]:
    """Evaluate `model` (a transformers causal LM or a PeftModel) on lm-eval `tasks`.

    `limit` keeps the first N documents of each task. `progress(done, total,
    message)` is called as requests finish (`total` grows when a new kind of
    request starts, e.g. generation after log-likelihoods); `check_cancel()` is
    called between chunks of requests and stops the run by raising.

    Returns JSON-serialisable results: "metrics" {"task/metric": value} (a metric
    under a filter other than lm-eval's "none" is "task/metric:filter"),
    "stderr" (same keys), "higher_is_better", "samples" (one per document:
    task, idx, prompt, reference, output, scores), "versions", "n_samples",
    "config".
    """
    from datasets.exceptions import DatasetNotFoundError
    from lm_eval import __version__, simple_evaluate

    if not tasks:
        raise ValueError(f"choose at least one task; local tasks: {', '.join(local_tasks(include_paths))}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit: {limit} must be 1 or more (or None for every document)")
    manager = _task_manager(tuple(str(r) for r in _roots(include_paths)), tasks)
    lm = _reporting_lm(model, tokenizer, batch_size, progress or _no_progress, check_cancel or _no_cancel)
    try:
        results = simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=manager,
            limit=limit,
            log_samples=True,
            bootstrap_iters=BOOTSTRAP_ITERS,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except (ConnectionError, DatasetNotFoundError) as err:
        raise ValueError(
            f"{', '.join(tasks)}: the task data must be local ({err}). Only tasks whose data is on this "
            "machine run here (dataset_path: json with dataset_kwargs.data_files, or a data set already in "
            f"the Hugging Face cache); local tasks: {', '.join(local_tasks(include_paths))}"
        ) from err
    config = {
        "tasks": list(tasks),
        "include_paths": [str(p) for p in include_paths],
        "limit": limit,
        "batch_size": batch_size,
        "seed": seed,
        "num_fewshot": results.get("n-shot", {}),
        "lm_eval_version": __version__,
    }
    return jsonable({**_metrics(results), "samples": _samples(results), "versions": results["versions"],
                      "n_samples": results["n-samples"], "config": config})


# --- tasks -------------------------------------------------------------------


def fingerprints(tasks: Sequence[str], include_paths: Sequence[str | Path] = ()) -> dict[str, str]:
    """A hash of each local task's files (its YAML and the data files beside it), to
    record with a result: the same number means the same questions. Tasks not found
    locally (built-in ones) are left out."""
    import hashlib

    found: dict[str, str] = {}
    for root in _roots(include_paths):
        for path in sorted(root.glob("**/*.yaml")):
            cfg = _read_yaml(path)
            name = cfg.get("group") or cfg.get("task")
            if name not in tasks or name in found:
                continue
            digest = hashlib.sha256()
            for f in sorted(p for p in path.parent.rglob("*") if p.is_file()):
                digest.update(f.relative_to(path.parent).as_posix().encode() + b"\0" + f.read_bytes())
            found[name] = digest.hexdigest()[:16]
    return found




def _roots(include_paths: Iterable[str | Path]) -> list[Path]:
    roots = [TASKS_DIR]
    for path in include_paths:
        path = Path(path).expanduser().resolve()
        if not path.is_dir():
            raise ValueError(f"include path {path} is not a folder of lm-eval task YAML files")
        roots.append(path)
    return roots


def _read_yaml(path: Path) -> dict:
    """A task YAML as plain data (`!function` tags kept as strings)."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _task_manager(roots: tuple[str, ...], tasks: Sequence[str]):
    """A TaskManager that knows `tasks`: ours alone when they are all local (indexing
    the ~15000 built-in task files takes ~6 s), else with the built-in tasks."""
    manager = _indexed(roots, with_builtins=False)
    if all(name in manager.task_index for name in tasks):
        return manager
    manager = _indexed(roots, with_builtins=True)
    unknown = [name for name in tasks if name not in manager.task_index]
    if unknown:
        raise ValueError(
            f"unknown lm-eval task {', '.join(map(repr, unknown))}; local tasks: {', '.join(local_tasks(roots[1:]))}"
        )
    return manager


@functools.lru_cache(maxsize=4)
def _indexed(roots: tuple[str, ...], with_builtins: bool):
    """The task index of `roots` (and the built-in tasks), kept for the process: a job
    is one process, and the tests reuse the slow built-in index."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=list(roots), include_defaults=with_builtins)
    _anchor_data_files(manager, [Path(r) for r in roots])
    return manager


def _anchor_data_files(manager, roots: list[Path]) -> None:
    """Resolve relative `dataset_kwargs.data_files` of the tasks under `roots` against
    their YAML's folder (lm-eval hands them to `datasets` as they are, i.e. relative
    to the current directory): the entry gets the full config, paths made absolute."""
    from lm_eval.tasks._yaml_loader import load_yaml

    for entry in manager.task_index.values():
        path = entry.yaml_path
        if path is None or not any(path.is_relative_to(root) for root in roots):
            continue
        data_files = ((entry.cfg or {}).get("dataset_kwargs") or {}).get("data_files")
        if data_files is None:
            continue
        cfg = load_yaml(path, resolve_func=True)
        cfg["dataset_kwargs"]["data_files"] = _absolute(data_files, path.parent)
        entry.cfg, entry.yaml_path = cfg, None  # the factory builds from cfg when there is no path


def _absolute(data_files, folder: Path):
    """data_files (a path, a list, or a dict of split -> path or list) with relative paths under `folder`."""
    if isinstance(data_files, dict):
        return {split: _absolute(files, folder) for split, files in data_files.items()}
    if isinstance(data_files, list):
        return [_absolute(files, folder) for files in data_files]
    if "://" in data_files or Path(data_files).is_absolute():
        return data_files
    return str(folder / data_files)


# --- the model ---------------------------------------------------------------


def _reporting_lm(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    progress: Progress,
    check_cancel: Callable[[], None],
):
    """lm-eval's HFLM on our loaded model, running requests in chunks so that it can
    report progress and be cancelled between them."""
    from lm_eval.models.huggingface import HFLM

    chunk = max(1, batch_size) * BATCHES_PER_CHUNK

    class ReportingLM(HFLM):
        done = total = 0

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._chunked(super().loglikelihood, requests, "log-likelihood")

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._chunked(super().loglikelihood_rolling, requests, "rolling log-likelihood")

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._chunked(super().generate_until, requests, "generation")

        def _chunked(self, method, requests: list, what: str) -> list:
            self.total += len(requests)
            out: list = []
            for start in range(0, len(requests), chunk):
                check_cancel()
                out.extend(method(requests[start:start + chunk], disable_tqdm=True))
                self.done += len(requests[start:start + chunk])
                progress(self.done, self.total, f"{what}: {self.done}/{self.total} requests")
            return out

    return ReportingLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def _no_progress(done: int, total: int, message: str) -> None:
    pass


def _no_cancel() -> None:
    pass


# --- results -----------------------------------------------------------------


def _metrics(results: dict) -> dict[str, dict]:
    """{"metrics", "stderr", "higher_is_better"}, keyed "task/metric" ("task/metric:filter")."""
    metrics, stderr, better = {}, {}, {}
    for task, values in {**results["results"], **results.get("groups", {})}.items():
        directions = results.get("higher_is_better", {}).get(task, {})
        for key, value in values.items():
            if "," not in key:  # "alias", "name", ...
                continue
            metric, filt = key.split(",", 1)
            is_stderr = metric.endswith("_stderr")
            metric = metric.removesuffix("_stderr")
            name = f"{task}/{metric}" + ("" if filt == "none" else f":{filt}")
            if not isinstance(value, numbers.Real):  # "N/A" stderr
                continue
            (stderr if is_stderr else metrics)[name] = value
            if metric in directions:
                better[name] = directions[metric]
    return {"metrics": metrics, "stderr": stderr, "higher_is_better": better}


def _samples(results: dict) -> list[dict]:
    """One row per document: the prompt, the reference and the model's answer as text."""
    rows = []
    for task, logged in results.get("samples", {}).items():
        output_type = results["configs"][task].get("output_type")
        for sample in logged:
            prompt, reference, output = _texts(sample, output_type)
            rows.append({
                "task": task,
                "idx": sample["doc_id"],
                "prompt": prompt,
                "reference": reference,
                "output": output,
                "scores": {m: sample[m] for m in sample["metrics"] if m in sample},
            })
    return rows


def _texts(sample: dict, output_type: str) -> tuple[str, str, str]:
    """(prompt, reference, output) of a logged lm-eval sample."""
    arguments, resps, target = sample["arguments"], sample["filtered_resps"], sample["target"]
    prompt = str(arguments[0][0])
    if output_type == "multiple_choice":
        choices = [str(arg[1]).strip() for arg in arguments]
        best = max(range(len(resps)), key=lambda i: resps[i][0])  # the acc prediction: highest log-likelihood
        gold = target if isinstance(target, list) else [target]
        reference = " | ".join(choices[g] if isinstance(g, int) and 0 <= g < len(choices) else str(g) for g in gold)
        return prompt, reference, choices[best]
    return prompt, str(target), str(resps[0])  # generated text (or a log-likelihood for other types)


# --- the job ------------------------------------------------------------------------------


class EvalLmEvalSpec(EvalSpec):
    """lm-evaluation-harness tasks whose data is local (our own tasks ship in
    assets/lm_eval_tasks) on a registered model or adapter."""

    kind: ClassVar[str] = "eval_lm_eval"
    command: ClassVar[tuple[str, ...]] = ("eval", "lm-eval")
    flags: ClassVar[dict[str, str]] = {"tasks": "task"}
    user_code: ClassVar[tuple[str, ...]] = ("task_dir",)

    tasks: list[str] = []
    """Task names (local tasks, or tasks in task_dir)."""
    task_dir: str = ""
    """A folder of your own lm-eval task YAML files (their data must be local)."""
    limit: int = Field(0, ge=0)
    """Documents per task (0: all)."""
    batch_size: int = Field(8, ge=1, le=4096)
    """Requests scored together."""
    seed: int = Field(0, ge=0)
    """lm-eval's random, numpy and torch seeds."""

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # "a, b" from a form or a YAML line
            value = value.split(",")
        if isinstance(value, list):
            value = [str(t).strip() for t in value if str(t).strip()]
            if not value:
                raise ValueError("give at least one task")
        return value

    @model_validator(mode="after")
    def _some_task(self) -> "EvalLmEvalSpec":
        if not self.tasks:
            raise SpecError("tasks", "give at least one task (local tasks ship in assets/lm_eval_tasks)")
        return self

    @field_validator("task_dir")
    @classmethod
    def _folder(cls, value: str) -> str:
        if not value:
            return value
        path = paths.usable(value, "dir")  # in the app: an uploaded task folder, or one under an allowed root
        if not path.is_dir():
            raise ValueError(f"{value} is not a folder")
        return str(path.resolve())

    def title(self) -> str:
        return f"lm-eval {', '.join(self.tasks)} on '{self.model}'"


def run_eval_lm_eval(spec: EvalLmEvalSpec, run: Run) -> dict[str, Any]:
    import os

    # tasks run on local data only: without this a Hub task spends ~25 s retrying downloads
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    row = models.get(run.model_ids[0])
    run.progress(0, None, f"loading '{row.name}'", force=True)

    def progress(done: int, total: int, message: str = "") -> None:
        run.progress(done, total, message or f"request {done} of {total}")

    if spec.task_dir:  # a folder of the user's: its YAML and its functions run confined, the model with them
        out = run_confined(spec, run, row, progress)
    else:
        model, tokenizer = generate.load(row)
        run.check_cancel()
        try:
            out = run_tasks(model, tokenizer, spec.tasks, limit=spec.limit or None, batch_size=spec.batch_size,
                            seed=spec.seed, progress=progress, check_cancel=run.check_cancel)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    store_samples(run.job_id, None, [{**s, "extra": {"task": s.get("task")}} for s in out["samples"]])
    step = (row.details or {}).get("steps")
    if step is not None:
        run.metrics(step, finite(out["metrics"]))
    return jsonable({
        "metrics": out["metrics"],
        "higher_is_better": out.get("higher_is_better", {}),
        "task_fingerprints": fingerprints(spec.tasks, [spec.task_dir] if spec.task_dir else []),
        "model": row.name,
        "model_id": row.id,
        "tasks": spec.tasks,
        "seed": spec.seed,
        "num_samples": len(out["samples"]),
        "settings": {"limit": spec.limit, "batch_size": spec.batch_size, **out.get("config", {})},
        "versions": out.get("versions", {}),
        "by_step": [],
    })


# --- a task folder of the user's, confined -------------------------------------------------------------


def run_confined(spec: EvalLmEvalSpec, run: Run, row, progress: Progress) -> dict[str, Any]:
    """`run_tasks` in a confined process (core/access/sandbox.py): a task folder is the
    user's code (its `!function`s run for every document; its data files could name any
    file), so the harness runs where it sees only a copy of that folder, the shipped
    tasks, the model's folders (read-only), and no network, environment or database."""
    import json
    import queue
    import shutil
    import threading

    import torch

    from core.access import sandbox
    from core.inference import generate as gen

    folder = run.dir / sandbox.FOLDER
    tasks_copy = folder / "tasks"
    shutil.rmtree(tasks_copy, ignore_errors=True)
    shutil.copytree(spec.task_dir, tasks_copy, symlinks=True)  # a link stays a link: to nothing the process sees
    weights, base = gen.folders(row)
    size_mb = sum(f.stat().st_size for d in (weights, base) if d for f in d.rglob("*") if f.is_file()) / 2**20
    memory = int(max(sandbox.memory_mb(), 8192) + 3 * size_mb)  # torch and the harness reserve ~2 GB of address space
    code = Path(__file__).resolve().parents[2]
    boot = (f"import sys; sys.path.insert(0, {str(code)!r}); from core.access.sandbox_child import limit_memory; "
            f"limit_memory({memory}); import runpy; runpy.run_module('core.evaluation.lm_eval', run_name='__main__')")
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(folder / "hf"),
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    read_only = (code / "core", code / "storage", TASKS_DIR, weights, *([base] if base else []))
    proc = sandbox.start(folder, ["-c", boot], read_only=read_only, extra_env=env)
    lines: queue.Queue = queue.Queue()
    tail: list[str] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    threading.Thread(target=lambda: [print(f"[lm-eval, confined] {x.decode(errors='replace').rstrip()}", flush=True)
                                     or tail.append(x.decode(errors="replace").rstrip()) for x in proc.stderr], daemon=True).start()
    request = {"model": str(weights), "base": str(base) if base else None, "tasks": spec.tasks, "include": [str(tasks_copy)],
               "limit": spec.limit or None, "batch_size": spec.batch_size, "seed": spec.seed}
    proc.stdin.write(json.dumps(request).encode() + b"\n")
    proc.stdin.close()
    try:
        while True:
            run.check_cancel()
            try:
                raw = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if raw is None:
                proc.wait(10)
                raise RuntimeError(f"the confined lm-eval process {sandbox.died(proc, memory, tail)}")
            message = json.loads(raw)
            if "progress" in message:
                progress(*message["progress"])
            elif "error" in message:
                raise (BadInput if message.get("bad_input") else RuntimeError)(message["error"])
            else:
                return message["result"]
    finally:
        sandbox.stop(proc)


def _confined_main() -> int:
    """The confined side of `run_confined`: a request on stdin, progress and the result
    as JSON lines on the stdout it started with (what the tasks print goes to stderr)."""
    import json
    import os
    import sys

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    request = json.loads(sys.stdin.readline())
    try:
        model, tokenizer = generate.load_from(Path(request["model"]), Path(request["base"]) if request["base"] else None)
        result = run_tasks(model, tokenizer, request["tasks"], include_paths=request["include"], limit=request["limit"],
                           batch_size=request["batch_size"], seed=request["seed"],
                           progress=lambda done, total, message="": out.write(json.dumps({"progress": [done, total, message]}) + "\n"))
        out.write(json.dumps({"result": jsonable(result)}) + "\n")
    except ValueError as exc:
        out.write(json.dumps({"error": str(exc), "bad_input": True}) + "\n")
    except Exception as exc:
        import traceback

        traceback.print_exc()
        out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
    return 0


if __name__ == "__main__":  # run by run_confined, inside the sandbox
    raise SystemExit(_confined_main())
