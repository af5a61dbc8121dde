"""Every UI action as a command.

    python -m core models list [--json]
    python -m core models show MODEL [--json]
    python -m core models create --arch gpt2|llama --size tiny|small --name NAME [--wait]
    python -m core models add-starter [--name NAME] [--wait]
    python -m core models import PATH_OR_HUB_ID --name NAME [--revision REV] [--wait]
    python -m core models rename MODEL NEW_NAME
    python -m core models delete MODEL --yes
    python -m core data import PATH --name NAME [--format F] [--map FIELD=COLUMN] [--drop-bad-rows] [--wait]
    python -m core data list|show [--json]
    python -m core data delete DATASET --yes
    python -m core train SPEC.yaml [--wait]
    python -m core train resume JOB_ID [--wait]
    python -m core models merge ADAPTER --name NAME [--wait]
    python -m core generate --model NAME [--max-new-tokens N] [--temperature T] [--seed S] PROMPT
    python -m core eval perplexity|generation|judge --model NAME --dataset NAME [--checkpoints] [--wait] [--json]
    python -m core eval judge ... (--judge-model NAME | --judge-url URL [--judge-api-key-env VAR]) [--rubric NAME]
    python -m core eval lm-eval --model NAME --task TASK [--task-dir DIR] [--limit N] [--wait] [--json]
    python -m core eval results [--json]
    python -m core eval samples JOB_ID [--step N] [--json]
    python -m core eval rubric list|show NAME|save NAME --file F [--scale-min 1 --scale-max 5]
    python -m core jobs pause ID [--wait]
    python -m core jobs list [--status S] [--json]
    python -m core jobs show ID [--json]
    python -m core jobs cancel ID [--wait]
    python -m core jobs logs ID [--lines N] [--follow]
    python -m core jobs wait ID

A command that starts a job prints the job id as its last line; with --wait it
shows progress and exits non-zero (saying why) unless the job succeeded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from core import datasets, jobs, models
from core.format import human_bytes, human_count
from core.specs import AddStarterSpec, CreateModelSpec, ImportDatasetSpec, ImportModelSpec, SpecError


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _print_record(data: dict[str, Any], as_json: bool) -> None:
    """One record: JSON, or a "key: value" line each."""
    if as_json:
        _print_json(data)
        return
    for key, value in data.items():
        print(f"{key}: {value}")


# --- waiting with a progress bar ------------------------------------------------------


def _wait_and_report(job_id: int) -> int:
    tty = sys.stderr.isatty()
    last = {"line": ""}

    def show(job) -> None:
        p = jobs.progress(job)
        frac = p.fraction or 0.0
        bar = "#" * int(frac * 30)
        eta = f" eta {p.eta_s:.0f}s" if p.eta_s is not None else ""
        line = f"job {job.id} {job.status:<9} [{bar:<30}] {p.step}/{p.total or '?'}{eta} {p.message}"
        if tty:
            sys.stderr.write("\r" + line[:150].ljust(150))
            sys.stderr.flush()
        elif line != last["line"]:
            print(line, file=sys.stderr, flush=True)
        last["line"] = line

    try:
        job = jobs.wait(job_id, on_poll=show)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; job {job_id} goes on (cancel: python -m core jobs cancel {job_id})", file=sys.stderr)
        return 130
    if tty:
        sys.stderr.write("\n")
    if job.status == "succeeded":
        print(f"job {job_id} succeeded", file=sys.stderr)
        return 0
    why = f" ({job.error_class})" if job.error_class else ""
    print(f"job {job_id} {job.status}{why}: {job.error or ''}", file=sys.stderr)
    if job.status == "failed" and job.log_tail:
        print(f"--- last lines of {jobs.log_path(job_id)} ---\n{job.log_tail}", file=sys.stderr)
    return 1


def _submit(spec: Any, wait: bool) -> int:
    job_id = jobs.submit(spec)
    print(f"{spec.title()}: job {job_id}", file=sys.stderr)
    if wait:
        code = _wait_and_report(job_id)
        print(job_id)
        return code
    print(job_id)
    return 0


# --- models -------------------------------------------------------------------------


def models_list(args) -> int:
    jobs.refresh()
    rows = models.list_dicts()
    if args.json:
        _print_json(rows)
        return 0
    view = [
        dict(r, params=human_count(r["num_parameters"]), size=human_bytes(r["size_bytes"]), arch=r["architecture"] or "-")
        for r in rows
    ]
    print(_table(view, ["id", "name", "status", "source", "arch", "params", "size"]))
    return 0


def models_show(args) -> int:
    jobs.refresh()
    row = models.find(args.model)
    data = models.model_dict(row)
    data["lineage"] = models.lineage(row)
    if args.json:
        _print_json(data)
        return 0
    for key, value in data.items():
        if key == "details":
            for k, v in (value or {}).items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0


def models_create(args) -> int:
    spec = CreateModelSpec(
        name=args.name,
        arch=args.arch,
        size=args.size,
        n_layer=args.n_layer,
        hidden_size=args.hidden_size,
        n_head=args.n_head,
        context_length=args.context_length,
        vocab_size=args.vocab_size,
        corpus=args.corpus or "",
        seed=args.seed,
    )
    return _submit(spec, args.wait)


def models_add_starter(args) -> int:
    return _submit(AddStarterSpec(name=args.name), args.wait)


def models_import(args) -> int:
    return _submit(ImportModelSpec(source=args.source, name=args.name, revision=args.revision or ""), args.wait)


def models_rename(args) -> int:
    row = models.rename(models.find(args.model).id, args.new_name)
    print(f"model {row.id} is now '{row.name}'")
    return 0


def _delete(what: str, row: Any, delete: Callable[[int], None], yes: bool) -> int:
    """Delete a model or a data set, only with --yes."""
    if not yes:
        print(f"this deletes {what} {row.id} '{row.name}' and its files: add --yes to confirm", file=sys.stderr)
        return 2
    delete(row.id)
    print(f"deleted {what} {row.id} '{row.name}'")
    return 0


def models_delete(args) -> int:
    return _delete("model", models.find(args.model), models.delete, args.yes)


# --- data sets ------------------------------------------------------------------------


def _mapping(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, col = pair.partition("=")
        if not sep or not key or not col:
            raise ValueError(f"--map {pair!r}: write it as FIELD=COLUMN, e.g. --map response=answer")
        out[key.strip()] = col.strip()
    return out


def data_import(args) -> int:
    spec = ImportDatasetSpec(
        path=args.path,
        name=args.name,
        format=args.format or "",
        mapping=_mapping(args.map),
        drop_bad_rows=args.drop_bad_rows,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        tokenizer_model=args.tokenizer_model or "",
    )
    # Check every row here first: a refused file registers nothing and says why.
    parsed = datasets.read_file(Path(spec.path))
    norm = datasets.normalize(parsed, spec.format or None, spec.mapping)
    if norm.problems:
        print(f"{len(norm.problems)} bad row(s) in {Path(spec.path).name}:\n{norm.report()}", file=sys.stderr)
        if not spec.drop_bad_rows:
            print("nothing imported: fix the file, or import the good rows with --drop-bad-rows", file=sys.stderr)
            return 1
        print(f"importing the {len(norm.rows)} good row(s) (--drop-bad-rows)", file=sys.stderr)
    print(f"format: {norm.format}; columns: " + ", ".join(f"{k} <- {v}" for k, v in norm.mapping.items()), file=sys.stderr)
    return _submit(spec, args.wait)


def data_list(args) -> int:
    jobs.refresh()
    rows = [datasets.dataset_dict(d) for d in datasets.list_datasets()]
    if args.json:
        _print_json(rows)
        return 0
    view = [dict(r, rows=r["num_rows"], tokens=(r["details"].get("tokens") or {}).get("total", "-")) for r in rows]
    print(_table(view, ["id", "name", "status", "format", "rows", "tokens", "fingerprint"]))
    return 0


def data_show(args) -> int:
    jobs.refresh()
    _print_record(datasets.dataset_dict(datasets.find(args.dataset)), args.json)
    return 0


def data_delete(args) -> int:
    return _delete("data set", datasets.find(args.dataset), datasets.delete, args.yes)


# --- training -------------------------------------------------------------------------


def load_spec_file(path: str) -> Any:
    """A job spec from a YAML (or JSON) file; `kind` selects the job."""
    import yaml

    from core.specs import spec_from_dict

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of fields (kind: sft, model: ..., ...)")
    data.setdefault("kind", "sft")
    try:
        return spec_from_dict(data)
    except SpecError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"{path}: {str(exc).split('__init__() ')[-1]}") from None


def train(args) -> int:
    if args.spec == "resume":
        if not args.job:
            raise ValueError("usage: python -m core train resume JOB_ID [--wait]")
        from core.train_jobs import resume

        job_id = resume(int(args.job))
        print(f"resuming job {args.job}: job {job_id}", file=sys.stderr)
        if args.wait:
            code = _wait_and_report(job_id)
            print(job_id)
            return code
        print(job_id)
        return 0
    return _submit(load_spec_file(args.spec), args.wait)


def models_merge(args) -> int:
    from core.specs import MergeAdapterSpec

    return _submit(MergeAdapterSpec(model=args.model, output_name=args.name), args.wait)


def jobs_pause(args) -> int:
    jobs.refresh()
    print(f"job {args.id}: {jobs.cancel(args.id, mode='pause')}")
    if args.wait:
        job = jobs.wait(args.id)
        print(f"job {args.id} {job.status}: {job.error or ''}")
    return 0


# --- generation -----------------------------------------------------------------------


def generate_cmd(args) -> int:
    """Stream a reply to the terminal as it is generated."""
    from core import generate

    row = models.find(args.model)
    settings = generate.Settings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        stop=args.stop or [],
        seed=args.seed,
    )
    why = generate.usable(row)
    if why:
        raise ValueError(why)
    model, tokenizer = generate.load(row)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": args.prompt}]
    text = generate.prompt_text(tokenizer, messages, raw=args.raw)
    stats = generate.Stats()
    for piece in generate.stream(model, tokenizer, text, settings, stats):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(f"[{stats.prompt_tokens} prompt tokens, {stats.new_tokens} new, {stats.tokens_per_s:.1f} tokens/s]", file=sys.stderr)
    return 0


# --- evaluation -----------------------------------------------------------------------


def eval_submit(args) -> int:
    """Start an evaluation; with --wait --json print its result as JSON."""
    from core import specs

    common = dict(model=args.model, seed=args.seed)
    if args.what == "lm-eval":
        spec: Any = specs.EvalLmEvalSpec(**common, tasks=args.task or [], task_dir=args.task_dir or "", limit=args.limit,
                                         batch_size=args.batch_size or 8)
    else:
        common.update(dataset=args.dataset or "", split=args.split, checkpoints=args.checkpoints)
        if args.max_samples is not None:
            common["max_samples"] = args.max_samples
        if args.what == "perplexity":
            spec = specs.EvalPerplexitySpec(**common, max_length=args.max_length, stride=args.stride)
        else:
            gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       batch_size=args.batch_size or 8)
            if args.what == "generation":
                spec = specs.EvalGenerationSpec(**common, **gen)
            else:
                key = args.judge_api_key or ""
                if args.judge_api_key_env:
                    import os

                    key = os.environ.get(args.judge_api_key_env, "")
                    if not key:
                        raise ValueError(f"--judge-api-key-env: the environment variable {args.judge_api_key_env} is not set")
                spec = specs.EvalJudgeSpec(
                    **common, **gen, judge_model=args.judge_model or "", judge_url=args.judge_url or "",
                    judge_api_key=key, judge_endpoint_model=args.judge_endpoint_model or "", rubric=args.rubric,
                )
    if not args.json:
        return _submit(spec, args.wait)
    job_id = jobs.submit(spec)
    print(f"{spec.title()}: job {job_id}", file=sys.stderr)
    if not args.wait:
        _print_json({"job_id": job_id, "status": "queued"})
        return 0
    code = _wait_and_report(job_id)
    job = jobs.get(job_id)
    _print_json({"job_id": job_id, "status": job.status, "error": job.error, **(job.result or {})})
    return code


def eval_results(args) -> int:
    from core import evals

    jobs.refresh()
    rows = evals.results_rows()
    if args.json:
        _print_json(rows)
        return 0
    view = [{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    print(_table(view, ["job", "kind", "model", "dataset", "samples", *evals.metric_names(rows)]))
    return 0


def eval_samples(args) -> int:
    from core import evals

    jobs.get(args.id)
    rows = evals.samples(args.id, args.step)
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        scores = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["scores"].items())
        print(f"--- #{r['idx']} [{scores}]\nprompt: {r['prompt'][:300]}")
        if r["reference"] is not None:
            print(f"reference: {r['reference'][:300]}")
        if r["output"] is not None:
            print(f"output: {r['output'][:300]}")
        if r["extra"].get("parse_error"):
            print(f"judge parse failure: {r['extra']['parse_error']}")
    return 0


def eval_rubric(args) -> int:
    from core import judge

    if args.verb == "list":
        for r in judge.rubrics():
            print(f"{r.name}  (scale {r.scale_min}-{r.scale_max})")
    elif args.verb == "show":
        r = judge.get_rubric(args.name)
        print(f"# scale {r.scale_min}-{r.scale_max}\n{r.text}")
    else:
        path = Path(args.file)
        if not path.is_file():
            raise ValueError(f"--file: {args.file} is not a file")
        judge.save_rubric(args.name, path.read_text(encoding="utf-8"), args.scale_min, args.scale_max)
        print(f"rubric {args.name!r} saved")
    return 0


# --- jobs ---------------------------------------------------------------------------


def jobs_list(args) -> int:
    jobs.refresh()
    rows = [jobs.job_dict(j) for j in jobs.list_jobs(status=args.status)]
    if args.json:
        _print_json(rows)
        return 0
    view = [
        dict(
            r,
            progress=f"{r['progress']['step']}/{r['progress']['total'] or '?'}",
            error=(r["error_class"] or ""),
        )
        for r in rows
    ]
    print(_table(view, ["id", "kind", "status", "progress", "error", "title"]))
    return 0


def jobs_show(args) -> int:
    jobs.refresh()
    _print_record(jobs.job_dict(jobs.get(args.id)), args.json)
    if args.json:
        return 0
    job = jobs.get(args.id)
    if job.status in jobs.TERMINAL and job.log_tail:
        print(f"--- log tail ---\n{job.log_tail}")
    return 0


def jobs_cancel(args) -> int:
    jobs.refresh()
    print(f"job {args.id}: {jobs.cancel(args.id)}")
    if args.wait:
        job = jobs.wait(args.id)
        print(f"job {args.id} {job.status}")
        return 0 if job.status in ("cancelled", "succeeded", "failed") else 1
    return 0


def jobs_logs(args) -> int:
    path = jobs.log_path(args.id)
    jobs.get(args.id)
    if not args.follow:
        print(jobs.read_log_tail(args.id, args.lines))
        return 0
    pos = 0
    while True:
        chunk = b""
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
        jobs.refresh()
        if jobs.get(args.id).status in jobs.TERMINAL and not chunk:
            return 0
        time.sleep(0.5)


def jobs_wait(args) -> int:
    return _wait_and_report(args.id)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core", description="LLM Development Platform command line")
    nouns = p.add_subparsers(dest="noun", required=True)

    m = nouns.add_parser("models", help="create, import, list and manage models").add_subparsers(dest="verb", required=True)
    c = m.add_parser("list", help="all models")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=models_list)
    c = m.add_parser("show", help="one model's details and lineage")
    c.add_argument("model", help="id or name")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=models_show)
    c = m.add_parser("create", help="a new model from a config, with a tokenizer trained on a local corpus")
    c.add_argument("--name", required=True)
    c.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    c.add_argument("--size", choices=["tiny", "small", "custom"], default="tiny")
    c.add_argument("--n-layer", type=int)
    c.add_argument("--hidden-size", type=int)
    c.add_argument("--n-head", type=int)
    c.add_argument("--context-length", type=int)
    c.add_argument("--vocab-size", type=int)
    c.add_argument("--corpus", help="UTF-8 text file for the tokenizer (default: assets/corpus.txt)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--wait", action="store_true", help="wait for the job and report how it ended")
    c.set_defaults(func=models_create)
    c = m.add_parser("add-starter", help="convert the shipped SmolLM2-135M-Instruct GGUF to a model folder")
    c.add_argument("--name", default=AddStarterSpec.name)
    c.add_argument("--wait", action="store_true")
    c.set_defaults(func=models_add_starter)
    c = m.add_parser("import", help="import a local folder, a .gguf file or a Hub id")
    c.add_argument("source", help="folder, .gguf file or Hub id")
    c.add_argument("--name", required=True)
    c.add_argument("--revision")
    c.add_argument("--wait", action="store_true")
    c.set_defaults(func=models_import)
    c = m.add_parser("merge", help="fold a LoRA adapter into its base model")
    c.add_argument("model", help="the adapter: id or name")
    c.add_argument("--name", required=True, help="name of the merged model")
    c.add_argument("--wait", action="store_true")
    c.set_defaults(func=models_merge)
    c = m.add_parser("rename", help="rename a model")
    c.add_argument("model")
    c.add_argument("new_name")
    c.set_defaults(func=models_rename)
    c = m.add_parser("delete", help="delete a model and its files")
    c.add_argument("model")
    c.add_argument("--yes", action="store_true", help="confirm")
    c.set_defaults(func=models_delete)

    d = nouns.add_parser("data", help="import, list and manage data sets").add_subparsers(dest="verb", required=True)
    c = d.add_parser("import", help="import a JSONL, JSON, CSV or Parquet file (every row is checked)")
    c.add_argument("path")
    c.add_argument("--name", required=True)
    c.add_argument("--format", choices=["text", "instruction", "chat", "preference", "prompt"], help="default: detected")
    c.add_argument("--map", action="append", metavar="FIELD=COLUMN", help="override the column mapping")
    c.add_argument("--drop-bad-rows", action="store_true", help="import the good rows, report the bad ones")
    c.add_argument("--validation-fraction", type=float, default=0.1)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--tokenizer-model", help="model whose tokenizer measures token statistics")
    c.add_argument("--wait", action="store_true")
    c.set_defaults(func=data_import)
    c = d.add_parser("list")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=data_list)
    c = d.add_parser("show")
    c.add_argument("dataset", help="id or name")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=data_show)
    c = d.add_parser("delete")
    c.add_argument("dataset")
    c.add_argument("--yes", action="store_true")
    c.set_defaults(func=data_delete)

    t = nouns.add_parser("train", help="run a training spec file, or resume a paused run")
    t.add_argument("spec", help="a YAML spec file (kind: sft, model, dataset, method, output_name, ...) or 'resume'")
    t.add_argument("job", nargs="?", help="with 'resume': the job to continue")
    t.add_argument("--wait", action="store_true")
    t.set_defaults(func=train)

    g = nouns.add_parser("generate", help="stream a model's reply to a prompt")
    g.add_argument("prompt")
    g.add_argument("--model", required=True, help="id or name (adapters are put on their base)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--system", help="system prompt")
    g.add_argument("--raw", action="store_true", help="no chat template: continue the prompt as plain text")
    g.set_defaults(func=generate_cmd)

    e = nouns.add_parser("eval", help="evaluate models; results, samples, judge rubrics").add_subparsers(dest="what", required=True)
    for what, text in (
        ("perplexity", "perplexity on the text of a data set (sliding window)"),
        ("generation", "BLEU, chrF, ROUGE, exact match and contains-answer against the references"),
        ("judge", "a judge model or OpenAI-compatible endpoint grades the answers with a rubric"),
        ("lm-eval", "lm-evaluation-harness tasks with local data"),
    ):
        c = e.add_parser(what, help=text)
        c.add_argument("--model", required=True, help="id or name (adapters are put on their base)")
        c.add_argument("--seed", type=int, default=0)
        c.add_argument("--batch-size", type=int)
        c.add_argument("--wait", action="store_true")
        c.add_argument("--json", action="store_true", help="with --wait: print the result (metrics) as JSON")
        if what == "lm-eval":
            c.add_argument("--task", action="append", help="task name (repeatable); local tasks ship in assets/lm_eval_tasks")
            c.add_argument("--task-dir", help="a folder of your own task YAML files (local data only)")
            c.add_argument("--limit", type=int, default=0, help="documents per task (0: all)")
        else:
            c.add_argument("--dataset", required=True, help="id or name")
            c.add_argument("--split", choices=["auto", "validation", "train", "all"], default="auto")
            c.add_argument("--max-samples", type=int, help="first N rows (0: all)")
            c.add_argument("--checkpoints", action="store_true", help="also evaluate the training run's checkpoints")
        if what == "perplexity":
            c.add_argument("--max-length", type=int, default=0, help="window in tokens (0: model context, max 1024)")
            c.add_argument("--stride", type=int, default=0, help="window step (0: half the window)")
        if what in ("generation", "judge"):
            c.add_argument("--max-new-tokens", type=int, default=64)
            c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
            c.add_argument("--top-p", type=float, default=1.0)
        if what == "judge":
            c.add_argument("--judge-model", help="a registered model as judge")
            c.add_argument("--judge-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
            c.add_argument("--judge-api-key", help="the key itself (visible in the process list: prefer --judge-api-key-env)")
            c.add_argument("--judge-api-key-env", metavar="VAR", help="read the key from this environment variable")
            c.add_argument("--judge-endpoint-model", help="model name sent to the endpoint")
            c.add_argument("--rubric", default="default")
        c.set_defaults(func=eval_submit)
    c = e.add_parser("results", help="every finished evaluation with its metrics")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=eval_results)
    c = e.add_parser("samples", help="an evaluation's per-sample records")
    c.add_argument("id", type=int)
    c.add_argument("--step", type=int, help="a checkpoint's step (default: the model itself)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=eval_samples)
    r = e.add_parser("rubric", help="the judge's stored rubrics").add_subparsers(dest="verb", required=True)
    c = r.add_parser("list")
    c.set_defaults(func=eval_rubric)
    c = r.add_parser("show")
    c.add_argument("name")
    c.set_defaults(func=eval_rubric)
    c = r.add_parser("save", help="create or replace a rubric from a text file with {question}, {reference}, {answer}")
    c.add_argument("name")
    c.add_argument("--file", required=True)
    c.add_argument("--scale-min", type=int, default=1)
    c.add_argument("--scale-max", type=int, default=5)
    c.set_defaults(func=eval_rubric)

    j = nouns.add_parser("jobs", help="watch and control jobs").add_subparsers(dest="verb", required=True)
    c = j.add_parser("list")
    c.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=jobs_list)
    c = j.add_parser("show")
    c.add_argument("id", type=int)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=jobs_show)
    c = j.add_parser("cancel", help="graceful stop; a second cancel kills")
    c.add_argument("id", type=int)
    c.add_argument("--wait", action="store_true")
    c.set_defaults(func=jobs_cancel)
    c = j.add_parser("pause", help="stop a training job with a checkpoint (resume: python -m core train resume ID)")
    c.add_argument("id", type=int)
    c.add_argument("--wait", action="store_true")
    c.set_defaults(func=jobs_pause)
    c = j.add_parser("logs")
    c.add_argument("id", type=int)
    c.add_argument("--lines", type=int, default=200)
    c.add_argument("--follow", "-f", action="store_true")
    c.set_defaults(func=jobs_logs)
    c = j.add_parser("wait", help="wait for a job; non-zero exit unless it succeeded")
    c.add_argument("id", type=int)
    c.set_defaults(func=jobs_wait)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[Any], int] = args.func
    try:
        return func(args)
    except (SpecError, models.ModelError, datasets.DatasetError, jobs.JobNotFound, ValueError) as exc:
        # BadInput (core.run) is a ValueError too: a resume that cannot be done
        print(f"error: {exc}", file=sys.stderr)
        return 2
