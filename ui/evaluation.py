"""Evaluation page pieces: the new-evaluation form, the results table with its
charts, checkpoints over steps, training runs overlaid, the samples browser and
the judge's rubrics."""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd
import streamlit as st

from core import charts
from core.data import files
from core.data import registry as datasets
from core.evaluation import judge
from core.evaluation import results as evals
from core.evaluation.generation import EvalGenerationSpec
from core.evaluation.judge import EvalJudgeSpec
from core.evaluation.lm_eval import EvalLmEvalSpec
from core.evaluation.perplexity import EvalPerplexitySpec
from core.evaluation.reward import EvalRewardSpec
from core.jobs import lifecycle as jobs
from core.kinds import traits
from core.models import registry as models
from core.format import inert_markdown
from core.spec import SpecError
from ui import access, common, data, forms

SPECS = {
    "perplexity": EvalPerplexitySpec, "generation": EvalGenerationSpec, "judge": EvalJudgeSpec, "reward": EvalRewardSpec,
    "lm-eval": EvalLmEvalSpec,
}
LABELS = {
    "perplexity": "Perplexity",
    "generation": "Generation metrics (BLEU, chrF, ROUGE, exact match)",
    "judge": "LLM as judge",
    "reward": "Reward model score",
    "lm-eval": "lm-eval-harness task",
}


def _usable_models() -> list:
    return [m for m in models.list_models() if m.status == "available" and not models.is_reward_model(m)]


def spec_form() -> Optional[Any]:
    """The new-evaluation form; returns a valid spec or None (errors shown)."""
    usable = _usable_models()
    if not usable:
        st.info("Evaluation needs a model: create, import or train one first (Models page).")
        return None
    kind = st.radio("What to measure", list(SPECS), format_func=LABELS.get, horizontal=True, key="eval_kind")
    spec = SPECS[kind]
    c1, c2 = st.columns(2)
    model = c1.selectbox("Model or adapter", [m.name for m in usable], key="eval_model", help=spec.doc("model"))
    try:
        if kind == "lm-eval":
            return _lm_eval_form(model, c2)
        data = [d for d in datasets.list_datasets() if d.status == "available" and d.format in (spec.dataset_formats or files.FORMATS)]
        if not data:
            st.info(f"This evaluation needs a data set of format {' or '.join(spec.dataset_formats or files.FORMATS)} (Datasets page).")
            return None
        dataset = c2.selectbox("Data set", [d.name for d in data], key=f"eval_dataset_{kind}", help=spec.doc("dataset"))
        c = st.columns(4)
        common: dict[str, Any] = dict(
            model=model,
            dataset=dataset,
            split=forms.field(spec, "split", "Split", key="eval_split", where=c[0]),
            max_samples=forms.field(spec, "max_samples", "Rows (0 = all)", key=f"eval_n_{kind}", where=c[1]),
            seed=forms.field(spec, "seed", "Seed", key="eval_seed", where=c[2]),
            checkpoints=forms.field(
                spec, "checkpoints", "Also each checkpoint", key="eval_ckpts", where=c[3],
                help="Evaluate every checkpoint the training run kept: the metric over training steps.",
            ),
        )
        if kind == "perplexity":
            c = st.columns(2)
            return EvalPerplexitySpec(
                **common,
                max_length=forms.field(spec, "max_length", "Window (tokens, 0 = model context)", key="eval_window", where=c[0]),
                stride=forms.field(spec, "stride", "Stride (0 = half the window)", key="eval_stride", where=c[1]),
            )
        c = st.columns(4)
        gen = dict(
            max_new_tokens=forms.field(spec, "max_new_tokens", "Max new tokens", key="eval_max_new", where=c[0]),
            temperature=forms.field(spec, "temperature", "Temperature (0 = greedy)", key="eval_temp", where=c[1]),
            top_p=forms.field(spec, "top_p", "Top-p", key="eval_top_p", where=c[2], min_value=0.01),
            batch_size=forms.field(spec, "batch_size", "Batch size", key="eval_batch", where=c[3]),
        )
        if kind == "generation":
            return EvalGenerationSpec(**common, **gen)
        if kind == "reward":
            rewarders = [m.name for m in models.list_models() if m.status == "available" and models.is_reward_model(m)]
            if not rewarders:
                st.info("No reward model yet: train one on the RLHF page.")
                return None
            reward_model = st.selectbox("Reward model", rewarders, key="eval_reward_model", help=spec.doc("reward_model"))
            return EvalRewardSpec(**common, **gen, reward_model=reward_model)
        return _judge_form(common, gen)
    except SpecError as exc:
        st.error(str(exc))
        return None


def _judge_form(common: dict[str, Any], gen: dict[str, Any]) -> EvalJudgeSpec:
    from core.serving.service import live_endpoints

    served = {f"{name} · {e['api_base']} (job {e['job_id']})": (e, name) for e in live_endpoints() for name in e["models"]}
    sources = ["A registered model", *(["A model served here"] if served else []), "An OpenAI-compatible endpoint"]
    source = st.radio("Judge", sources, horizontal=True, key="eval_judge_src",
                      help="A model served here is asked over HTTP like any endpoint: the server batches the judge's "
                           "questions with its other clients, and it takes no job slot")
    c = st.columns(3)
    fields: dict[str, Any] = {}
    if source == "A registered model":
        fields["judge_model"] = c[0].selectbox("Judge model", [m.name for m in _usable_models()], key="eval_judge_model")
    elif source == "A model served here":
        endpoint, name = served[c[0].selectbox("Served model", list(served), key="eval_judge_served")]
        fields.update(judge_url=endpoint["api_base"], judge_endpoint_model=name, judge_api_key=endpoint["api_key"])
    else:
        fields["judge_url"] = c[0].text_input("Endpoint URL", placeholder="http://127.0.0.1:8000/v1", key="eval_judge_url")
        fields["judge_endpoint_model"] = c[1].text_input("Model name at the endpoint", key="eval_judge_ep_model")
        fields["judge_api_key"] = c[2].text_input("API key (optional)", type="password", key="eval_judge_key")
    names = [r.name for r in judge.rubrics()]
    fields["rubric"] = st.selectbox("Rubric (edit in the Rubrics tab)", names, key="eval_rubric")
    return EvalJudgeSpec(**common, **gen, **fields)


def _lm_eval_form(model: str, column) -> Optional[EvalLmEvalSpec]:
    from core.evaluation import lm_eval

    local = lm_eval.local_tasks()
    tasks = column.multiselect("Tasks (shipped locally)", local, default=local[:1], key="eval_tasks")
    c = st.columns(3)
    task_dir = c[0].text_input("Your own task folder (optional)", key="eval_task_dir",
                               help="lm-eval task YAML files whose data files are local. It runs confined (no network, "
                                    "its own folder), with the model. " + common.PATHS_HELP)
    packed = c[0].file_uploader("…or upload it as a .zip", type=["zip"], key="eval_task_zip", disabled=not access.can_run())
    if packed is not None:
        if st.session_state.get("_task_zip_id") != packed.file_id:
            try:
                st.session_state["_task_zip_path"] = str(data.save_folder_zip(packed, "tasks"))
                st.session_state["_task_zip_id"] = packed.file_id
            except ValueError as exc:
                st.error(str(exc))
                return None
        task_dir = st.session_state["_task_zip_path"]
        c[0].caption(f"Using the uploaded folder ({', '.join(lm_eval.local_tasks([task_dir])) or 'no task found in it'})")
    extra = c[1].text_input("More task names (comma-separated)", key="eval_task_extra")
    limit = forms.field(EvalLmEvalSpec, "limit", "Documents per task (0 = all)", key="eval_limit", where=c[2])
    tasks = tasks + [t.strip() for t in extra.split(",") if t.strip()]
    return EvalLmEvalSpec(model=model, tasks=tasks, task_dir=task_dir, limit=limit)


# --- results ------------------------------------------------------------------------------


def _fmt(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def results_panel() -> None:
    """Every finished evaluation, filterable, with the grouped-bar chart."""
    rows = evals.results_rows()
    if not rows:
        st.info("No finished evaluation yet: start one in the first tab.")
        return
    c = st.columns(3)
    kinds = c[0].multiselect("Kind", sorted({r["kind"] for r in rows}), key="res_kinds")
    model_names = c[1].multiselect("Model", sorted({r["model"] for r in rows}), key="res_models")
    data_names = c[2].multiselect("Data set / task", sorted({r["dataset"] for r in rows}), key="res_data")
    shown = [
        r for r in rows
        if (not kinds or r["kind"] in kinds) and (not model_names or r["model"] in model_names)
        and (not data_names or r["dataset"] in data_names)
    ]
    names = evals.metric_names(shown)
    frame = pd.DataFrame([{k: _fmt(r.get(k)) for k in ["job", "kind", "model", "dataset", "split", "samples", *names]} for r in shown])
    st.dataframe(frame, hide_index=True, width="stretch", key="res_table")
    quality = [n for n in names if n not in evals.COUNTS]
    if not quality:
        return
    metric = st.selectbox("Chart metric", quality, key="res_metric")
    lower = " (lower is better)" if evals.lower_is_better(metric) else ""
    st.caption(f"{metric} by model{lower}; the newest evaluation of each model and data set.")
    st.plotly_chart(charts.metric_by_model_figure(shown, metric), key="res_chart")
    over_steps_panel()


def over_steps_panel() -> None:
    """A checkpoint evaluation: its metrics against the training step."""
    stepped = [j for j in evals.eval_jobs() if len(evals.by_step(j)) > 1]
    if not stepped:
        st.caption("Evaluate with *Also each checkpoint* to see a metric over training steps.")
        return
    st.subheader("Over training steps")
    by_id = {j.id: j for j in stepped}
    chosen = st.selectbox("Checkpoint evaluation", list(by_id), format_func=lambda i: f"#{i} {by_id[i].title}", key="steps_job")
    points = evals.by_step(by_id[chosen])
    names: list[str] = []
    for p in points:  # a metric may be missing at some step (e.g. no judge grade read)
        names += [n for n, v in p["metrics"].items() if n not in evals.COUNTS and isinstance(v, (int, float)) and n not in names]
    picked = st.multiselect("Metrics", names, default=names[:1], key=f"steps_metrics_{chosen}")
    st.plotly_chart(charts.metric_over_steps_figure(points, picked), key="steps_chart")


# --- comparing training runs --------------------------------------------------------------


def compare_runs_panel() -> None:
    """Training curves of several runs on one chart, and how their specs differ."""
    runs = [j for j in jobs.list_jobs(limit=500) if traits(j.kind).trains]
    if len(runs) < 1:
        st.info("No training runs yet (Training page).")
        return
    by_id = {j.id: j for j in runs}
    chosen = st.multiselect(
        "Runs", list(by_id), default=list(by_id)[:2], format_func=lambda i: f"#{i} {by_id[i].title}", key="cmp_runs"
    )
    if not chosen:
        return
    series = {i: jobs.metrics_with_history(i) for i in chosen}
    names = sorted({n for s in series.values() for n in s}, key=lambda n: (n != "train_loss", n))
    if names:
        metric = st.selectbox("Metric", names, key="cmp_metric")
        overlay = {f"#{i} {by_id[i].spec.get(traits(by_id[i].kind).output_field, '')}": series[i].get(metric, []) for i in chosen}
        st.plotly_chart(charts.runs_overlay_figure(overlay, metric), key="cmp_chart")
    diff = evals.spec_diff([by_id[i] for i in chosen])
    if len(chosen) > 1:
        st.caption("Spec fields that differ between the chosen runs:")
        if diff:
            st.dataframe(pd.DataFrame(diff).astype(str), hide_index=True, width="stretch", key="cmp_diff")
        else:
            st.caption("(none: the specs are the same)")


# --- samples ------------------------------------------------------------------------------


def samples_panel() -> None:
    """Best and worst samples per metric, and two models' answers side by side."""
    done = evals.eval_jobs()
    if not done:
        st.info("No finished evaluation yet.")
        return
    by_id = {j.id: j for j in done}
    label = lambda i: f"#{i} {by_id[i].title}"  # noqa: E731
    chosen = st.selectbox("Evaluation", list(by_id), format_func=label, key="smp_job")
    steps = evals.sample_steps(chosen)
    step = None
    if len(steps) > 1:
        step = st.selectbox(
            "Checkpoint", steps, index=len(steps) - 1, key=f"smp_step_{chosen}",
            format_func=lambda s: "the model itself" if s is None else f"step {s}",
        )
    rows = evals.samples(chosen, step)
    metrics = evals.sample_metrics(rows)
    failures = [r for r in rows if r["extra"].get("parse_error") or r["extra"].get("judge_error")]
    if failures:
        st.warning(f"{len(failures)} of {len(rows)} judge replies could not be graded (listed at the bottom).")
    if metrics:
        c = st.columns(2)
        metric = c[0].selectbox("Metric", metrics, key=f"smp_metric_{chosen}")
        n = int(c[1].number_input("How many", 1, 50, 3, key="smp_n"))
        best, worst = evals.best_and_worst(rows, metric, n)
        left, right = st.columns(2)
        with left:
            st.markdown(f"**Best by {metric}**")
            for r in best:
                _sample_card(r, metric)
        with right:
            st.markdown(f"**Worst by {metric}**")
            for r in worst:
                _sample_card(r, metric)
    st.subheader("Two evaluations side by side")
    others = [i for i in by_id if i != chosen and by_id[i].kind == by_id[chosen].kind]
    if not others:
        st.caption("Run the same evaluation on another model to compare answers prompt by prompt.")
    else:
        other = st.selectbox("Compare with", others, format_func=label, key=f"smp_other_{chosen}")
        pairs = evals.paired(chosen, other)
        if not pairs:
            st.caption("These two evaluations share no prompts.")
        for pair in pairs[:50]:
            with st.container(border=True):
                st.markdown(f"**#{pair['idx']}** {inert_markdown(pair['prompt'][:500])}")
                if pair["reference"]:
                    st.caption(f"Reference: {pair['reference'][:500]}")
                a, b = st.columns(2)
                for column, side, job_id in ((a, pair["a"], chosen), (b, pair["b"], other)):
                    with column:
                        st.markdown(f"*{by_id[job_id].result.get('model', '')}* (#{job_id})")
                        st.text((side["output"] or "")[:1000])
                        st.caption(_scores_line(side["scores"]))
    if failures:
        with st.expander(f"Judge parse failures and errors ({len(failures)})"):
            for r in failures:
                st.markdown(f"**#{r['idx']}** {inert_markdown(r['extra'].get('parse_error') or r['extra'].get('judge_error'))}")
                st.text(r["extra"].get("judge_reply", "")[:1000])


def _scores_line(scores: dict[str, Any]) -> str:
    return " · ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items())


def _sample_card(r: dict[str, Any], metric: str) -> None:
    with st.container(border=True):
        st.markdown(f"**#{r['idx']}** · {metric} = {r['scores'][metric]:.4g}")
        st.text(r["prompt"][:600])
        if r["reference"] is not None:
            st.caption(f"Reference: {r['reference'][:400]}")
        if r["output"] is not None:
            st.markdown("Output:")
            st.text(r["output"][:800])
        if r["extra"].get("reasoning"):
            st.caption(f"Judge: {r['extra']['reasoning'][:400]}")


# --- rubrics ------------------------------------------------------------------------------


def rubrics_panel() -> None:
    """Edit the judge's rubrics; evaluations keep the text they used."""
    stored = judge.rubrics()
    names = [r.name for r in stored] + ["(new rubric)"]
    pick = st.selectbox("Rubric", names, key="rub_pick")
    current = next((r for r in stored if r.name == pick), None)
    with st.form(f"rubric_{pick}"):
        name = st.text_input("Name", value=current.name if current else "", key=f"rub_name_{pick}")
        text = st.text_area(
            "Prompt: {question}, {reference} and {answer} are filled in",
            value=current.text if current else judge.DEFAULT_RUBRIC, height=320, key=f"rub_text_{pick}",
        )
        c = st.columns(2)
        low = int(c[0].number_input("Lowest grade", 0, 100, current.scale_min if current else 1, key=f"rub_min_{pick}"))
        high = int(c[1].number_input("Highest grade", 1, 100, current.scale_max if current else 5, key=f"rub_max_{pick}"))
        if st.form_submit_button("Save rubric", type="primary", disabled=not access.can_run()):
            try:
                judge.save_rubric(name, text, low, high, by=access.actor())
                st.success(f"Rubric '{name.strip()}' saved. New judge evaluations use it; finished ones keep theirs.")
            except ValueError as exc:
                st.error(str(exc))
    st.caption("The judge's reply should contain a score: a JSON object with \"score\", or a line \"Score: N\". "
               "Replies without a readable score in the scale are counted as parse failures.")
