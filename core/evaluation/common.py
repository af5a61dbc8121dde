"""Evaluation jobs: perplexity, generation metrics, LLM-as-judge, lm-eval tasks.

    python -m core eval perplexity --model NAME --dataset NAME --wait --json
    python -m core eval generation --model NAME --dataset NAME --checkpoints
    python -m core eval judge --model NAME --dataset NAME --judge-url http://127.0.0.1:8000/v1
    python -m core eval lm-eval --model NAME --task llmdev_basics

Every job stores each sample (prompt, reference, output, scores) in
`eval_samples`, its set-level metrics in the result (and as job metrics at the
checkpoint's training step, for the over-steps chart), and records the model,
the data set fingerprint, the settings and the seed. With `checkpoints`, every
checkpoint the training run kept is evaluated too, oldest first.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from core import datasets, generate, jobs, models, scoring
from core.format import jsonable
from core.run import BadInput, Run
from core.sft_format import PLAIN_PROMPT, SFT_FORMATS, _bos, render_segments
from storage.db import data_home, session
from storage.tables import EvalSample

MAX_WINDOW = 1024


# --- what to evaluate ---------------------------------------------------------------------


def checkpoints_of(row) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint kept by the run that trained `row`."""
    from core.train_jobs import run_checkpoints

    return run_checkpoints(row.job_id) if row.job_id else []


def targets(row, with_checkpoints: bool) -> list[tuple[Optional[int], Optional[Path]]]:
    """(step, weights folder) to evaluate: the checkpoints, then the model itself
    (step = its training steps; None for a model that was not trained here)."""
    final_step = (row.details or {}).get("steps")
    if not with_checkpoints:
        return [(final_step, None)]
    ckpts = checkpoints_of(row)
    if not ckpts:
        raise BadInput(
            f"checkpoints: '{row.name}' has no training checkpoints to evaluate "
            "(only models trained here keep them; turn checkpoints off)"
        )
    listed: list[tuple[Optional[int], Optional[Path]]] = [(s, p) for s, p in ckpts if s != final_step]
    return listed + [(final_step, None)]


def rows_of(data_row, split: str, max_samples: int) -> tuple[list[dict[str, Any]], str]:
    """The rows to evaluate and the split they came from."""
    splits = datasets.load(data_row)
    if split == "auto":
        split = "validation" if "validation" in splits and len(splits["validation"]) else "train"
    if split == "all":
        rows = [r for name in ("train", "validation") if name in splits for r in splits[name]]
    elif split in splits:
        rows = list(splits[split])
    else:
        raise BadInput(f"split: '{data_row.name}' has no {split} split (it has: {', '.join(splits)})")
    if max_samples:
        rows = rows[:max_samples]
    if not rows:
        raise BadInput(f"dataset: the {split} split of '{data_row.name}' is empty")
    return rows, split


def _store(job_id: int, step: Optional[int], samples: list[dict[str, Any]]) -> None:
    with session() as s:
        s.add_all(
            EvalSample(
                job_id=job_id,
                step=step,
                idx=sample["idx"],
                prompt=jsonable(sample.get("prompt", "")),
                reference=jsonable(sample.get("reference")),
                output=jsonable(sample.get("output")),
                scores=jsonable(sample.get("scores", {})),
                extra=jsonable(sample.get("extra", {})),
            )
            for sample in samples
        )


def _finite(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _evaluate_targets(
    spec, run: Run, score: Callable[[Any, Any, Callable[[int, str], None]], tuple[dict[str, Any], list[dict]]], n_per_target: int
) -> dict[str, Any]:
    """Run `score(model, tokenizer, tick)` on each target (checkpoints, then the model);
    store its samples and metrics; the model's own metrics are the job's."""
    row = models.get(run.model_ids[0])
    data_row = datasets.get(run.dataset_ids[0]) if run.dataset_ids else None
    chosen = targets(row, spec.checkpoints)
    total = n_per_target * len(chosen)
    by_step: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    for number, (step, weights) in enumerate(chosen):
        what = f"checkpoint {step}" if weights is not None else f"'{row.name}'"
        run.progress(number * n_per_target, total, f"loading {what}", force=True)
        model, tokenizer = generate.load(row, weights)
        run.check_cancel()
        done = number * n_per_target

        def tick(n: int, message: str, done: int = done, what: str = what) -> None:
            run.check_cancel()
            run.progress(done + n, total, f"{what}: {message}")

        metrics, samples = score(model, tokenizer, tick)
        _store(run.job_id, step if weights is not None else None, samples)
        if step is not None:
            run.metrics(step, _finite(metrics))
        by_step.append({"step": step, "checkpoint": str(weights) if weights else None, "metrics": metrics})
        del model
    run.progress(total, total, "done", force=True)
    return jsonable({
        "metrics": metrics,
        "model": row.name,
        "model_id": row.id,
        "dataset": data_row.name if data_row else None,
        "dataset_id": data_row.id if data_row else None,
        "dataset_fingerprint": data_row.fingerprint if data_row else None,
        "seed": spec.seed,
        "by_step": by_step if spec.checkpoints else [],
    })


# --- perplexity ---------------------------------------------------------------------------


def text_of(fmt: str, row: dict[str, Any], tokenizer) -> tuple[str, bool]:
    """The text perplexity is measured on, and whether the tokenizer should add
    its special tokens (rendered examples already carry them)."""
    if fmt == "text":
        return row["text"], True
    if fmt in SFT_FORMATS:
        return "".join(t for t, _ in render_segments(fmt, row, tokenizer, completion_only=False)), False
    if fmt == "preference":
        return row["prompt"] + "\n" + row["chosen"], True
    return row["prompt"] + ("\n" + row["answer"] if row.get("answer") else ""), True


def window_nll(model, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """Summed negative log-likelihood of every token after the first, and how many:
    windows of `max_length` moved by `stride`, each token scored once with as much
    context as the window gives (the Hugging Face perplexity recipe)."""
    import torch
    import torch.nn.functional as F

    seq = torch.tensor([ids], device=model.device)
    n = seq.shape[1]
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        window = seq[:, begin:end]
        labels = window.clone()
        labels[:, : window.shape[1] - (end - prev_end)] = -100  # scored by an earlier window
        with torch.no_grad():
            logits = model(input_ids=window).logits.float()
        target = labels[:, 1:]
        total += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum").item()
        count += int((target != -100).sum())
        prev_end = end
        if end == n:
            break
    return total, count


def run_eval_perplexity(spec, run: Run) -> dict[str, Any]:
    data_row = datasets.get(run.dataset_ids[0])
    row = models.get(run.model_ids[0])
    rows, split = rows_of(data_row, spec.split, spec.max_samples)
    context = row.context_length or MAX_WINDOW
    window = min(spec.max_length, context) if spec.max_length else min(context, MAX_WINDOW)
    stride = spec.stride or max(1, window // 2)
    if stride >= window:
        raise BadInput(
            f"stride: {stride} must be shorter than the window ({window} tokens"
            + (", the model's context" if window == context else "") + "): a longer stride leaves tokens unscored"
        )

    def score(model, tokenizer, tick):
        samples, nll, tokens, skipped = [], 0.0, 0, 0
        for i, r in enumerate(rows):
            text, special = text_of(data_row.format, r, tokenizer)
            ids = tokenizer(text, add_special_tokens=special)["input_ids"]
            if len(ids) < 2:
                skipped += 1
                continue
            s_nll, s_tokens = window_nll(model, ids, window, stride)
            nll, tokens = nll + s_nll, tokens + s_tokens
            samples.append(
                {
                    "idx": i,
                    "prompt": text,
                    "scores": {"perplexity": math.exp(s_nll / s_tokens), "nll": s_nll / s_tokens, "tokens": s_tokens},
                }
            )
            tick(i + 1, f"text {i + 1} of {len(rows)}")
        if not tokens:
            raise BadInput(f"dataset: no text in '{data_row.name}' has two or more tokens")
        metrics = {"perplexity": math.exp(nll / tokens), "nll": nll / tokens, "tokens": tokens, "texts": len(samples), "skipped": skipped}
        return metrics, samples

    result = _evaluate_targets(spec, run, score, len(rows))
    result.update(split=split, num_samples=len(rows), settings={"window": window, "stride": stride})
    return result


# --- generation ---------------------------------------------------------------------------


def prompts_of(fmt: str, rows: list[dict[str, Any]], tokenizer) -> list[tuple[int, str, str, str, bool]]:
    """(row index, question, prompt text, reference, add special tokens) for every row
    with a reference, prompted the way training formats it (chat template, or the
    plain instruction layout for tokenizers without one)."""
    out = []
    for i, r in enumerate(rows):
        if fmt == "chat":
            messages = list(r["messages"])
            if not messages or messages[-1]["role"] != "assistant":
                continue
            context, reference = messages[:-1], messages[-1]["content"]
        else:
            reference = r.get("response") if fmt == "instruction" else r.get("answer")
            if not reference:
                continue
            context = ([{"role": "system", "content": r["system"]}] if r.get("system") else []) + [
                {"role": "user", "content": r["prompt"]}
            ]
        question = "\n".join(m["content"] for m in context if m["role"] != "system")
        if tokenizer.chat_template:
            text, special = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True), False
        else:
            history = question if fmt != "chat" else "\n".join(f"{m['role']}: {m['content']}" for m in context)
            text, special = _bos(tokenizer) + PLAIN_PROMPT.format(prompt=history), False
        out.append((i, question, text, reference, special))
    return out


def prompt_room(model, spec) -> Optional[int]:
    """Tokens a prompt may take so that it and the answer fit the model's context
    (None: no known limit)."""
    context = generate.context_length(model)
    if not context:
        return None
    room = context - spec.max_new_tokens
    if room < 8:
        raise BadInput(
            f"max_new_tokens: {spec.max_new_tokens} leaves no room for the prompt in this model's "
            f"context of {context} tokens; use at most {context - 8}"
        )
    return room


def generate_batch(model, tokenizer, texts: list[str], spec, special: bool) -> tuple[list[str], int]:
    """Answers to a batch of prompts (left-padded), special tokens removed, and how
    many prompts were cut from the left to fit the context with the answer."""
    import torch

    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # keep the end of a long prompt: the question
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    room = prompt_room(model, spec)
    truncated = 0
    if room is not None:
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]
        truncated = sum(n > room for n in lengths)
    enc = tokenizer(
        texts, return_tensors="pt", padding=True, add_special_tokens=special, truncation=room is not None, max_length=room
    ).to(model.device)
    # every setting explicit: None would take the model's generation_config defaults
    kwargs: dict[str, Any] = dict(
        max_new_tokens=spec.max_new_tokens, pad_token_id=tokenizer.pad_token_id, repetition_penalty=1.0
    )
    if spec.temperature > 0:
        kwargs.update(do_sample=True, temperature=spec.temperature, top_p=spec.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    answers = [tokenizer.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for o in out]
    return answers, truncated


def answers(model, tokenizer, prompts, spec, tick, counts: dict[str, int]) -> Iterator[tuple[tuple, str]]:
    """Yield (prompt entry, answer) batch by batch, seeded once; counts["truncated_prompts"]
    says how many prompts were cut to fit the context."""
    from transformers import set_seed

    set_seed(spec.seed)
    counts.setdefault("truncated_prompts", 0)
    for start in range(0, len(prompts), spec.batch_size):
        batch = prompts[start : start + spec.batch_size]
        outputs, truncated = generate_batch(model, tokenizer, [p[2] for p in batch], spec, batch[0][4])
        counts["truncated_prompts"] += truncated
        yield from zip(batch, outputs)
        tick(start + len(batch), f"answer {start + len(batch)} of {len(prompts)}")


def generation_settings(spec) -> dict[str, Any]:
    return {k: getattr(spec, k) for k in ("max_new_tokens", "temperature", "top_p", "batch_size", "seed")}


def _prompts_for(spec, run: Run):
    """The data set, its rows, the split used and how many rows have a reference."""
    data_row = datasets.get(run.dataset_ids[0])
    rows, split = rows_of(data_row, spec.split, spec.max_samples)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(data_home() / models.get(run.model_ids[0]).path)
    n = len(prompts_of(data_row.format, rows, tokenizer))
    if not n:
        raise BadInput(f"dataset: no row of the {split} split of '{data_row.name}' has a reference answer")
    return data_row, rows, split, n


def run_eval_generation(spec, run: Run) -> dict[str, Any]:
    data_row, rows, split, n_prompts = _prompts_for(spec, run)

    def score(model, tokenizer, tick):
        prompts = prompts_of(data_row.format, rows, tokenizer)
        samples, outputs, references, counts = [], [], [], {}
        for (i, question, text, reference, _), output in answers(model, tokenizer, prompts, spec, tick, counts):
            scores = scoring.sample_scores(output, reference)
            samples.append({"idx": i, "prompt": question, "reference": reference, "output": output, "scores": scores})
            outputs.append(output)
            references.append(reference)
        metrics = scoring.corpus_scores(outputs, references, [s["scores"] for s in samples])
        metrics.update(samples=len(samples), **counts)
        return metrics, samples

    result = _evaluate_targets(spec, run, score, n_prompts)
    result.update(split=split, num_samples=len(rows), settings=generation_settings(spec))
    return result


# --- LLM as judge -------------------------------------------------------------------------


def run_eval_judge(spec, run: Run) -> dict[str, Any]:
    from core import judge

    data_row, rows, split, n_prompts = _prompts_for(spec, run)
    try:
        rubric = judge.get_rubric(spec.rubric)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if spec.judge_model:
        judge_row = models.get(run.model_ids[1])
        run.progress(0, None, f"loading the judge '{judge_row.name}'", force=True)
        judge_model, judge_tok = generate.load(judge_row)

        def ask(prompt: str) -> str:
            return judge.ask_local(judge_model, judge_tok, prompt, spec.judge_max_new_tokens)

        judge_name = judge_row.name
    else:

        def ask(prompt: str) -> str:
            return judge.ask_endpoint(
                spec.judge_url, prompt, api_key=spec.judge_api_key, model=spec.judge_endpoint_model, max_tokens=spec.judge_max_new_tokens
            )

        judge_name = spec.judge_url

    def score(model, tokenizer, tick):
        prompts = prompts_of(data_row.format, rows, tokenizer)
        counts: dict[str, int] = {}
        answered = list(answers(model, tokenizer, prompts, spec, lambda n, m: tick(n // 2, m), counts))
        samples, grades, failures, errors = [], [], 0, 0
        for number, ((i, question, _, reference, _), output) in enumerate(answered, 1):
            prompt = rubric.fill(question, reference, output)
            try:
                reply = ask(prompt)
            except judge.JudgeError as exc:
                if number == 1:
                    raise BadInput(str(exc)) from None  # the judge cannot be asked at all
                errors += 1
                samples.append({"idx": i, "prompt": question, "reference": reference, "output": output,
                                "scores": {}, "extra": {"judge_error": str(exc)}})
                tick((len(answered) + number) // 2, f"judged {number} of {len(answered)}")
                continue
            grade = judge.parse_grade(reply, rubric.scale_min, rubric.scale_max)
            if grade.score is None:
                failures += 1
            else:
                grades.append(grade.score)
            samples.append(
                {
                    "idx": i,
                    "prompt": question,
                    "reference": reference,
                    "output": output,
                    "scores": {"judge_score": grade.score} if grade.score is not None else {},
                    "extra": {"reasoning": grade.reasoning, "judge_reply": reply, "parse_error": grade.error},
                }
            )
            tick((len(answered) + number) // 2, f"judged {number} of {len(answered)}")
        metrics = {
            "judge_score": sum(grades) / len(grades) if grades else None,
            "graded": len(grades),
            "parse_failures": failures,
            "judge_errors": errors,
            "samples": len(samples),
            **counts,
        }
        return metrics, samples

    result = _evaluate_targets(spec, run, score, n_prompts)
    result.update(
        split=split,
        num_samples=len(rows),
        settings=generation_settings(spec) | {"judge": judge_name, "judge_max_new_tokens": spec.judge_max_new_tokens},
        rubric={"name": rubric.name, "text": rubric.text, "scale": [rubric.scale_min, rubric.scale_max]},
    )
    return result


# --- lm-evaluation-harness ----------------------------------------------------------------


def run_eval_lm_eval(spec, run: Run) -> dict[str, Any]:
    import os

    # tasks run on local data only: without this a Hub task spends ~25 s retrying downloads
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from core import lm_eval_bridge

    row = models.get(run.model_ids[0])
    run.progress(0, None, f"loading '{row.name}'", force=True)
    model, tokenizer = generate.load(row)
    run.check_cancel()

    def progress(done: int, total: int, message: str = "") -> None:
        run.progress(done, total, message or f"request {done} of {total}")

    try:
        out = lm_eval_bridge.run(
            model,
            tokenizer,
            spec.tasks,
            include_paths=[spec.task_dir] if spec.task_dir else [],
            limit=spec.limit or None,
            batch_size=spec.batch_size,
            seed=spec.seed,
            progress=progress,
            check_cancel=run.check_cancel,
        )
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    _store(run.job_id, None, [{**s, "extra": {"task": s.get("task")}} for s in out["samples"]])
    step = (row.details or {}).get("steps")
    if step is not None:
        run.metrics(step, _finite(out["metrics"]))
    return jsonable({
        "metrics": out["metrics"],
        "higher_is_better": out.get("higher_is_better", {}),
        "task_fingerprints": lm_eval_bridge.fingerprints(spec.tasks, [spec.task_dir] if spec.task_dir else []),
        "model": row.name,
        "model_id": row.id,
        "tasks": spec.tasks,
        "seed": spec.seed,
        "num_samples": len(out["samples"]),
        "settings": {"limit": spec.limit, "batch_size": spec.batch_size, **out.get("config", {})},
        "versions": out.get("versions", {}),
        "by_step": [],
    })
