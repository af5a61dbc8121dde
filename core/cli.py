"""Every UI action as a command. Each job kind's command (its flags, their
choices and defaults) is derived from its spec in core/kinds.py; the replay
command a job shows is the same command with the same flags.

    python -m core run SPEC.yaml [--wait] [--json]          any kind (`kind:` in the file)
    python -m core train SPEC.yaml [--wait]                  the same, kind sft by default
    python -m core train sft|reward|dpo|grpo|ppo --model M --dataset D --output-name OUT [--max-steps N ...] [--wait]
    python -m core train resume JOB_ID [--wait]
    python -m core models create|add-starter|import ... [--wait] [--json]
    python -m core models list|show MODEL [--json]
    python -m core models rename MODEL NEW_NAME
    python -m core models delete MODEL --yes
    python -m core data import PATH --name NAME [--format F] [--map FIELD=COLUMN] [--drop-bad-rows] [--wait]
    python -m core data list|show DATASET [--json]
    python -m core data delete DATASET --yes
    python -m core generate --model NAME [--max-new-tokens N] [--temperature T] [--seed S] PROMPT
    python -m core score --reward-model RM --prompt P --response R [--json]
    python -m core eval perplexity|generation|judge|lm-eval --model NAME ... [--checkpoints] [--wait] [--json]
    python -m core eval results [--json]
    python -m core eval samples JOB_ID [--step N] [--json]
    python -m core eval rubric list|show NAME|save NAME --file F [--scale-min 1 --scale-max 5]
    python -m core export merge|onnx|triton --model NAME --name OUT [--int8] [--int4] [--wait] [--json]
    python -m core export list|show EXPORT [--json]
    python -m core export delete EXPORT --yes
    python -m core serve --model NAME [--model NAME2 ...] [--export ONNX] [--backend torch|onnx] [--host H] [--port P] [--api-key-env VAR] [--wait] [--json]
    python -m core deploy setup-triton
    python -m core deploy triton --export NAME [--http-port P] [--grpc-port G] [--wait] [--json]
    python -m core jobs list [--status S] [--json]
    python -m core jobs show ID [--json]
    python -m core jobs cancel|pause|stop ID [--wait]
    python -m core jobs logs ID [--lines N] [--follow]
    python -m core jobs wait ID
    python -m core users add|list|set-role|disable|enable|reset-password|delete ...   (core/access/commands.py)
    python -m core audit [--limit N] [--user NAME] [--json]

`python -m core <noun> <verb> --help` lists a command's flags with their docs.
A command that starts a job prints the job id as its last line (with --json,
a JSON record); with --wait it shows progress and exits non-zero (saying why)
unless the job succeeded. Bad input exits with 2 and a message naming the field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from core.data import registry as datasets
from core.export import registry as exports
from core.format import human_bytes, human_count
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.spec import Spec, SpecError


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
    if job.status in ("succeeded", "stopped"):  # stopped: a service's normal end
        print(f"job {job_id} {job.status}", file=sys.stderr)
        return 0
    why = f" ({job.error_class})" if job.error_class else ""
    print(f"job {job_id} {job.status}{why}: {job.error or ''}", file=sys.stderr)
    if job.status == "failed" and job.log_tail:
        print(f"--- last lines of {jobs.log_path(job_id)} ---\n{job.log_tail}", file=sys.stderr)
    return 1


def _started(job_id: int, wait: bool, as_json: bool) -> int:
    """Report a queued job: its id last (or a JSON record), after waiting if asked."""
    code = _wait_and_report(job_id) if wait else 0
    if as_json:
        job = jobs.get(job_id)
        record = {"job_id": job_id, "status": job.status, "error": job.error, **(job.result or {})}
        if record.get("export_id") and exports.get_or_none(record["export_id"]) is not None:
            record["export"] = exports.export_dict(exports.get_or_none(record["export_id"]))
        _print_json(record)
    else:
        print(job_id)
    return code


def submit_spec(spec: Spec, wait: bool = False, as_json: bool = False) -> int:
    job_id = jobs.submit(spec)
    print(f"{spec.title()}: job {job_id}", file=sys.stderr)
    if spec.service:
        return _service_started(job_id, wait, as_json)
    return _started(job_id, wait, as_json)


def _service_started(job_id: int, wait: bool, as_json: bool) -> int:
    """A service: wait until it listens (or ends), say where; with --wait, until it is stopped."""
    while True:
        jobs.refresh()
        job = jobs.get(job_id)
        endpoint = (job.result or {}).get("endpoint")
        if endpoint or job.status in jobs.TERMINAL:
            break
        time.sleep(0.3)
    if endpoint and job.status == "running":
        print(f"listening on {endpoint['url']} (OpenAI API base: {endpoint['api_base']}); "
              f"stop it: python -m core jobs stop {job_id}", file=sys.stderr)
    code = _wait_and_report(job_id) if wait else (0 if job.status == "running" else 1)
    job = jobs.get(job_id)
    if not wait and job.status in jobs.TERMINAL:
        print(f"job {job_id} {job.status}: {job.error or ''}", file=sys.stderr)
    if as_json:
        _print_json({"job_id": job_id, "status": job.status, "error": job.error, **(job.result or {})})
    else:
        print(job_id)
    return code


# --- commands derived from the specs ------------------------------------------------------

# argparse values that are not spec fields
_NOT_FIELDS = {"func", "spec_cls", "wait", "json", "noun", "verb", "default_kind"}


def _field_help(cls: type[Spec], name: str) -> str:
    text = cls.doc(name).replace("%", "%%")
    choices = cls.choices(name)
    if choices:
        text += " One of: " + ", ".join(repr(c) if c == "" else str(c) for c in choices) + "."
    low, high = cls.bounds(name)
    if low is not None and high is not None:
        text += f" From {low:g} to {high:g}."
    elif low is not None:
        text += f" At least {low:g}."
    info = cls.model_fields[name]
    if info.is_required():
        text += " (required)"
    elif cls.default(name) not in (None, "", [], {}):
        text += f" Default: {cls.default(name)}."
    return text


def add_spec_command(verbs, cls: type[Spec]) -> None:
    """One job kind's command: a flag per field (a positional argument for the
    fields in `positional`), typed and checked by the spec itself."""
    doc = (cls.__doc__ or "").strip()
    c = verbs.add_parser(cls.command[-1], help=doc.split("\n")[0], description=doc)
    for name in cls.field_names():
        helptext = _field_help(cls, name)
        if name in cls.positional:
            c.add_argument(name, help=helptext)
            continue
        flag, kind = "--" + cls.flag(name), cls.base_type(name)
        common = dict(dest=name, default=argparse.SUPPRESS, help=helptext)
        if kind is bool:
            c.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind is dict:
            c.add_argument(flag, action="append", metavar="FIELD=VALUE", **common)
        elif kind is list:
            c.add_argument(flag, action="append", metavar="VALUE", **common)
        else:
            choices = cls.choices(name)
            metavar = "{" + ",".join(str(x) or '""' for x in choices) + "}" if choices else name.upper()
            c.add_argument(flag, metavar=metavar, **common)
        if name in cls.secrets:
            c.add_argument(f"{flag}-env", dest=f"{name}_env", metavar="VAR", default=argparse.SUPPRESS,
                           help="read it from this environment variable (a key in the arguments shows in the process list)")
    c.add_argument("--wait", action="store_true", help="wait for the job and report how it ended")
    c.add_argument("--json", action="store_true", help="print the job as JSON (with --wait: its result too)")
    c.set_defaults(func=spec_command, spec_cls=cls)


def spec_from_args(cls: type[Spec], args: argparse.Namespace) -> Spec:
    return cls(**{k: v for k, v in vars(args).items() if k not in _NOT_FIELDS})


def spec_command(args) -> int:
    return submit_spec(spec_from_args(args.spec_cls, args), args.wait, args.json)


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


# --- exports -----------------------------------------------------------------------------


def _verdict(row: dict[str, Any]) -> str:
    checks = row["verification"]
    if not checks:
        return "-"
    return ", ".join(f"{p} {'ok' if c.get('ok') else 'OUTSIDE TOLERANCE'}" for p, c in checks.items())


def export_list(args) -> int:
    rows = [exports.export_dict(r) for r in exports.list_exports()]
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        r["size"] = human_bytes(r["size_bytes"]) if r["size_bytes"] else "-"
        r["verified"] = _verdict(r)
    print(_table(rows, ["id", "name", "format", "status", "model", "size", "verified"]))
    return 0


def export_show(args) -> int:
    _print_record(exports.export_dict(exports.find(args.export)), args.json)
    return 0


def export_delete(args) -> int:
    return _delete("export", exports.find(args.export), exports.delete, args.yes)


def load_spec_file(path: str, default_kind: str = "") -> Spec:
    """A job spec from a YAML (or JSON) file; `kind` selects the job. Every
    problem is named with the file, and the line where there is one."""
    import yaml

    from core.kinds import spec_from_dict

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise ValueError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a spec (a spec is one mapping of fields)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of fields (kind: sft, model: ..., ...)")
    if default_kind:
        data.setdefault("kind", default_kind)
    try:
        return spec_from_dict(data)
    except SpecError as exc:
        line = _yaml_line(text, exc.field.split(".")[0])
        raise ValueError(f"{path}:{f' line {line}:' if line else ''} {exc}") from None


def _yaml_line(text: str, key: str) -> int:
    """The line of a top-level key in a YAML mapping (0: not found)."""
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return 0
    for key_node, _ in getattr(node, "value", []) if isinstance(node, yaml.MappingNode) else []:
        if getattr(key_node, "value", None) in (key, f"{key}_env"):
            return key_node.start_mark.line + 1
    return 0


def run_file(args) -> int:
    return submit_spec(load_spec_file(args.spec, args.default_kind), args.wait, args.json)


def train_resume(args) -> int:
    from core.training.common import resume

    job_id = resume(args.job)
    print(f"resuming job {args.job}: job {job_id}", file=sys.stderr)
    return _started(job_id, args.wait, args.json)


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
    from core.inference import generate

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


def score_cmd(args) -> int:
    """The score a reward model gives a response to a prompt."""
    from core.inference import reward

    row = models.find(args.reward_model)
    why = reward.usable(row)
    if why:
        raise ValueError(why)
    model, tokenizer = reward.load(row)
    value = reward.score(model, tokenizer, [(args.prompt, args.response)])[0]
    if args.json:
        _print_json({"reward_model": row.name, "prompt": args.prompt, "response": args.response, "score": value})
    else:
        print(f"{value:.4f}")
    return 0


def eval_results(args) -> int:
    from core.evaluation import results as evals

    jobs.refresh()
    rows = evals.results_rows()
    if args.json:
        _print_json(rows)
        return 0
    view = [{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    print(_table(view, ["job", "kind", "model", "dataset", "samples", *evals.metric_names(rows)]))
    return 0


def eval_samples(args) -> int:
    from core.evaluation import results as evals

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
    from core.evaluation import judge

    if args.rubric_verb == "list":
        for r in judge.rubrics():
            print(f"{r.name}  (scale {r.scale_min}-{r.scale_max})")
    elif args.rubric_verb == "show":
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
    print(_table(view, ["id", "kind", "status", "progress", "runner", "error", "title"]))
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
        return 0 if job.status in jobs.TERMINAL else 1
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


def deploy_setup(args) -> int:
    from core.serving import triton_deploy

    triton_deploy.setup_env(lambda line: print(line, file=sys.stderr, flush=True))
    print(triton_deploy.env_dir())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from core.kinds import KINDS

    p = argparse.ArgumentParser(prog="python -m core", description="LLM Development Platform command line")
    top = p.add_subparsers(dest="noun", required=True)
    nouns = {
        "models": top.add_parser("models", help="create, import, list and manage models"),
        "data": top.add_parser("data", help="import, list and manage data sets"),
        "train": top.add_parser("train", help="train a model (SPEC.yaml, a kind, or resume a run)"),
        "eval": top.add_parser("eval", help="evaluate models; results, samples, judge rubrics"),
        "export": top.add_parser("export", help="merge adapters; export to ONNX and Triton; list exports"),
        "deploy": top.add_parser("deploy", help="deploy a Triton repository to a Triton server on this machine"),
        "jobs": top.add_parser("jobs", help="watch and control jobs"),
    }
    verbs = {noun: parser.add_subparsers(dest="verb", required=True) for noun, parser in nouns.items()}
    for kind in KINDS.values():  # the commands that start a job, from the specs
        command = kind.spec.command
        add_spec_command(top if len(command) == 1 else verbs[command[0]], kind.spec)

    c = top.add_parser("run", help="run a spec file of any kind (the YAML a page shows)")
    c.add_argument("spec", help="a YAML (or JSON) spec file with `kind:` and the fields")
    c.add_argument("--wait", action="store_true")
    c.add_argument("--json", action="store_true")
    c.add_argument("--default-kind", default="", help=argparse.SUPPRESS)  # `train FILE`: sft
    c.set_defaults(func=run_file)

    m = verbs["models"]
    c = m.add_parser("list", help="all models")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=models_list)
    c = m.add_parser("show", help="one model's details and lineage")
    c.add_argument("model", help="id or name")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=models_show)
    c = m.add_parser("rename", help="rename a model")
    c.add_argument("model")
    c.add_argument("new_name")
    c.set_defaults(func=models_rename)
    c = m.add_parser("delete", help="delete a model and its files")
    c.add_argument("model")
    c.add_argument("--yes", action="store_true", help="confirm")
    c.set_defaults(func=models_delete)

    d = verbs["data"]
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

    c = verbs["train"].add_parser("resume", help="continue a paused, cancelled or failed run from its last checkpoint")
    c.add_argument("job", type=int, help="the job to continue")
    c.add_argument("--wait", action="store_true")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=train_resume)

    g = top.add_parser("generate", help="stream a model's reply to a prompt")
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

    c = top.add_parser("score", help="the score a reward model gives a response to a prompt")
    c.add_argument("--reward-model", required=True, help="id or name of a reward model (python -m core train reward)")
    c.add_argument("--prompt", required=True)
    c.add_argument("--response", required=True)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=score_cmd)

    e = verbs["eval"]
    c = e.add_parser("results", help="every finished evaluation with its metrics")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=eval_results)
    c = e.add_parser("samples", help="an evaluation's per-sample records")
    c.add_argument("id", type=int)
    c.add_argument("--step", type=int, help="a checkpoint's step (default: the model itself)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=eval_samples)
    r = e.add_parser("rubric", help="the judge's stored rubrics").add_subparsers(dest="rubric_verb", required=True)
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

    x = verbs["export"]
    c = x.add_parser("list", help="all exports with their size and verification")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=export_list)
    c = x.add_parser("show", help="one export: settings, verification numbers, files, lineage")
    c.add_argument("export", help="id or name")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=export_show)
    c = x.add_parser("delete", help="delete an export and its files")
    c.add_argument("export")
    c.add_argument("--yes", action="store_true", help="confirm")
    c.set_defaults(func=export_delete)

    c = verbs["deploy"].add_parser("setup-triton", help="make Triton's own environment (nvidia-pytriton; once, ~60 MB)")
    c.set_defaults(func=deploy_setup)

    j = verbs["jobs"]
    c = j.add_parser("list")
    c.add_argument("--status", choices=[*jobs.ACTIVE, *jobs.TERMINAL])
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
    c = j.add_parser("stop", help="stop a service (a server, a deployment); the same as cancel")
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
    from core.access import commands

    commands.add_commands(top)
    return p


def _train_file_alias(argv: list[str]) -> list[str]:
    """`train SPEC.yaml` is `run SPEC.yaml` with kind sft by default."""
    from core.kinds import KINDS

    train_verbs = {k.spec.command[-1] for k in KINDS.values() if k.spec.command[0] == "train"} | {"resume"}
    if len(argv) >= 2 and argv[0] == "train" and argv[1] not in train_verbs and not argv[1].startswith("-"):
        return ["run", argv[1], "--default-kind", "sft", *argv[2:]]
    return argv


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(_train_file_alias(argv))
    func: Callable[[Any], int] = args.func
    try:
        return func(args)
    except (ValueError, LookupError, OSError) as exc:
        # SpecError, ModelError, DatasetError and BadInput are ValueErrors; JobNotFound a LookupError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if os.environ.get("LLMDEV_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc} (a bug: set LLMDEV_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
