"""Training page pieces: the run form with its YAML, the live run panel."""

from __future__ import annotations

from typing import Any, Optional

import streamlit as st

from core import charts
from core.access import accounts
from core.data import registry as datasets
from core.export.merge import MergeAdapterSpec
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.kinds import traits
from core.spec import SpecError
from core.training.sft import PRESETS, SFTSpec
from ui import access, common, forms, live

PRESET_LABELS = {"quick": "Quick try (CPU, minutes)", "standard": "Standard"}


def spec_form() -> Optional[SFTSpec]:
    """The new-run form (no st.form: the YAML below follows every change)."""
    bases = [m for m in models.list_models() if m.status == "available" and m.source != "adapter"]
    data = [d for d in datasets.list_datasets() if d.status == "available" and d.format in SFTSpec.dataset_formats]
    if not bases or not data:
        st.info("Training needs a model (Models page) and a text, instruction or chat data set (Datasets page).")
        return None
    preset = st.radio("Preset", list(PRESET_LABELS), format_func=PRESET_LABELS.get, horizontal=True, key="sft_preset")
    p = PRESETS[preset]

    def f(name: str, label: str, where: Any, key: str = "", **kw: Any) -> Any:
        # keyed by preset where the preset sets the field: a keyed input would keep a stale default
        if name in p:
            kw.setdefault("default", p[name])
            key = f"{key or 'sft_' + name}_{preset}"
        return forms.field(SFTSpec, name, label, key=key or f"sft_{name}", where=where, **kw)

    c1, c2, c3 = st.columns(3)
    model = c1.selectbox("Base model", [m.name for m in bases], key="sft_model", help=SFTSpec.doc("model"))
    dataset = c2.selectbox("Data set", [d.name for d in data], key="sft_dataset", help=SFTSpec.doc("dataset"))
    method = f("method", "Method", c3, horizontal=True)
    if method == "qlora":
        from core.hardware import qlora_unavailable

        why = qlora_unavailable()
        if why:
            st.warning(f"QLoRA cannot run here: {why}. Choose LoRA.")
    c1, c2, c3, c4 = st.columns(4)
    # the key follows the choices: a keyed input would keep a stale default
    output_name = f("output_name", "Output name", c1, key=f"sft_output_{model}_{method}_{dataset}", default=f"{model}-{method}-{dataset}"[:90])
    values: dict[str, Any] = dict(
        max_steps=f("max_steps", "Max steps (0 = epochs)", c2, key="sft_steps"),
        learning_rate=f("learning_rate", "Learning rate", c3, key="sft_lr", format="%.1e"),
        batch_size=f("batch_size", "Batch size", c4, key="sft_bs"),
    )
    with st.expander("Advanced"):
        a = st.columns(4)
        values.update(
            epochs=f("epochs", "Epochs", a[0], min_value=0.1),
            max_length=f("max_length", "Max length", a[1], key="sft_len"),
            grad_accum=f("grad_accum", "Gradient accumulation", a[2], key="sft_accum"),
            warmup_steps=f("warmup_steps", "Warm-up steps", a[3], key="sft_warmup"),
            scheduler=f("scheduler", "Scheduler", a[0], key="sft_sched"),
            weight_decay=f("weight_decay", "Weight decay", a[1], key="sft_wd"),
            eval_steps=f("eval_steps", "Evaluate every (steps, 0 = at the end)", a[2], key="sft_eval"),
            save_steps=f("save_steps", "Checkpoint every (steps)", a[3], key="sft_save"),
            keep_checkpoints=f(
                "keep_checkpoints", "Checkpoints kept (0 = all)", a[3], key="sft_keep",
                help="Keep every checkpoint to evaluate the model over training steps (Evaluation page).",
            ),
            lora_r=f("lora_r", "LoRA r", a[0], key="sft_r"),
            lora_alpha=f("lora_alpha", "LoRA alpha", a[1], key="sft_alpha"),
            lora_dropout=f("lora_dropout", "LoRA dropout", a[2], key="sft_dropout", max_value=0.9),
            lora_targets=f("lora_targets", "LoRA target modules", a[3], key="sft_targets"),
            seed=f("seed", "Seed", a[0]),
            packing=f("packing", "Packing", a[1]),
            completion_only=f("completion_only", "Loss on answers only", a[2], key="sft_completion"),
        )
    try:
        spec = SFTSpec(model=model, dataset=dataset, output_name=output_name, method=method, **values)
    except SpecError as exc:
        st.error(str(exc))
        return None
    with st.expander("Copy to reproduce: the command, or the spec file", expanded=False):
        st.code(spec.replay() + " --wait", language="bash")
        st.caption("Or save this as `run.yaml` and run `python -m core run run.yaml --wait`:")
        st.code(spec.to_yaml(), language="yaml")
    return spec


def show_run(job_id: int) -> None:
    """After Start or Resume: open the Runs tab on this run (at the next rerun,
    before the tabs and the picker exist)."""
    st.session_state["follow_run"] = job_id


def follow(tab_key: str = "train_tab", pick_key: str = "train_pick") -> None:
    """At the top of a page with a Runs tab: follow a run just started or resumed."""
    job_id = st.session_state.pop("follow_run", None)
    if job_id is not None:
        st.session_state[tab_key] = "Runs"
        st.session_state[pick_key] = job_id


def pick_run(rows: list, key: str, empty: str):
    """A Runs tab's picker: `rows` newest first, the run picked kept in `key` (set by
    `follow` for a run just started); `empty` when there is none (returns None)."""
    if not rows:
        st.info(empty)
        return None
    by_id = {j.id: j for j in rows}
    if st.session_state.get(key) not in by_id:
        st.session_state[key] = rows[0].id
    chosen = st.selectbox("Run", list(by_id), format_func=lambda i: common.job_label(by_id[i]), key=key)
    return by_id[chosen]


LIVE_REFRESH_S = 30.0
"""A live run panel reruns at least this often (for the other jobs' elapsed times)."""
CHART_EVERY_S = 10.0
"""A live run panel reruns when its run took a step or logged a point, at most this
often (at once when a job starts or ends or the run's status changes): each rerun
costs the browser, and so the job, CPU (bench/README.md, "With the app open").
Its numbers move at every poll in between (ui.live)."""
MORE_CHARTS_EVERY_S = 30.0
"""While a run is live, the panels beyond the loss are redrawn at most this often."""


def _resumed_at(job_id: int) -> list[int]:
    """The steps where this run and the runs it continued were resumed."""
    resumed_at = []
    current = jobs.get(job_id)
    while current.resumed_from:
        first = jobs.metrics(current.id).get("train_loss")
        if first:
            resumed_at.append(first[0][0])
        current = jobs.get(current.resumed_from)
    return resumed_at


def run_panel(job_id: int) -> bool:
    """One training run, live: progress, charts (with the runs it resumed),
    controls, and the other active jobs. Returns whether it is live; a live
    panel is the page's only refreshing part (its numbers move at each poll, it
    reruns for its chart at most every CHART_EVERY_S, and reruns the page when a
    job starts or ends), so the page draws no separate jobs panel."""
    job = jobs.get(job_id)
    active = job.status in jobs.ACTIVE
    watch = live.jobs_watcher()

    @st.fragment
    def panel() -> None:
        if "follow_run" in st.session_state:  # Resume (a button in here): the whole page follows
            st.rerun()
        if active:
            watch()
            for other in jobs.list_jobs(limit=50):
                if other.status in jobs.ACTIVE and other.id != job_id:
                    common.progress_line(other)
            # the numbers move at each poll, drawn by the live component; the panel
            # (the chart) reruns at most every CHART_EVERY_S
            live.follow(job_id, refresh_s=LIVE_REFRESH_S, view=True, min_rerun_s=CHART_EVERY_S)
        job = jobs.get(job_id)
        # the first panel (the loss; the reward in RL) follows the logged steps (a
        # Vega-Lite chart: the browser adds the new points); the Plotly panels,
        # redrawn from scratch, every 30 s and only when asked for while live
        panels = traits(job.kind).panels
        _, chart = common.live_figure(job_id, f"train_live_{job_id}", lambda s: charts.live_chart(s, panels[0], _resumed_at(job_id)))
        if not active:
            view = live.figures(job)
            for col, (label, value) in zip(st.columns(len(view["figures"])), view["figures"]):
                col.metric(label, value)
            p = jobs.progress(job)
            st.progress(p.fraction or 0.0, text=p.message)
        if job.error:
            (st.info if job.status in jobs.STOPPED else st.error)(forms.page_words(job.error or ""))
        if chart is not None:
            st.vega_lite_chart(chart[0], chart[1], key=f"train_live_{job_id}")
            shown = not active or st.toggle(
                f"All charts: {', '.join(t.lower() for t, _ in panels[1:])}", key=f"train_more_on_{job_id}",
                help=f"Redrawn every {MORE_CHARTS_EVERY_S:.0f} s while the run is live (each redraw costs the browser, "
                "and so the job, about a quarter of a core-second here); all shown when it ends.",
            )
            if shown:
                _, more = common.live_figure(
                    job_id, f"train_more_{job_id}", lambda s: charts.training_figure(s, panels[1:], _resumed_at(job_id)),
                    every_s=MORE_CHARTS_EVERY_S,
                )
                if more is not None:
                    st.plotly_chart(more, key=f"train_more_{job_id}")
        else:
            st.caption("The charts fill in as soon as the first step is logged.")
        controls(job)

    panel()
    return active


def controls(job) -> None:
    c = st.columns(2)
    from core.training.common import has_checkpoint

    owner, mine = accounts.owner_of(job.owner_id), access.may_change(job.owner_id)
    if owner or not mine:
        st.caption(f"{owner or 'Nobody'}'s run" + ("" if mine else ": only its owner or an admin may stop or resume it"))
    if not mine:
        pass  # nothing to press
    elif job.status in jobs.ACTIVE and job.cancel_requested_at is None:
        if traits(job.kind).resumes:
            c[0].button("Pause (checkpoint)", key=f"pause_{job.id}", on_click=_stop, args=(job.id, "pause"))
        c[1].button("Cancel (no checkpoint)", key=f"stop_{job.id}", on_click=_stop, args=(job.id, "cancel"))
    elif job.status in jobs.ACTIVE:
        c[0].caption(f"{'Pausing: writing a checkpoint' if job.stop_mode == 'pause' else 'Stopping'}…")
        c[1].button("Kill now", key=f"kill_{job.id}", on_click=_stop, args=(job.id, "cancel"), help="no checkpoint")
    elif job.status in ("paused", "cancelled", "failed") and traits(job.kind).resumes and has_checkpoint(job.id):
        c[0].button("Resume from the last checkpoint", key=f"resume_{job.id}", type="primary", on_click=_resume, args=(job.id,))
    out_id = (job.result or {}).get("model_id")
    if job.status == "succeeded" and out_id:
        out = models.get(out_id) if out_id in {m.id for m in models.list_models()} else None
        if out is not None and out.source == "adapter":
            if c[1].button("Merge the adapter into a full model", key=f"merge_{job.id}", disabled=not access.can_run()):
                forms.submit(lambda: MergeAdapterSpec(model=str(out.id), output_name=f"{out.name}-merged"[:100]))
    if st.session_state.get("train_action"):
        st.toast(st.session_state.pop("train_action"))


def _stop(job_id: int, mode: str) -> None:
    try:
        st.session_state["train_action"] = f"Job {job_id}: {jobs.cancel(job_id, mode=mode, by=access.actor())}"
    except ValueError as exc:  # no longer allowed (signed out, the role changed)
        st.session_state["train_action"] = f"Not stopped: {exc}"


def _resume(job_id: int) -> None:
    from core.training.common import resume

    try:
        new_id = resume(job_id, by=access.actor())
        st.session_state["train_action"] = f"Resuming job {job_id} as job {new_id}"
        show_run(new_id)
    except (SpecError, ValueError) as exc:
        st.session_state["train_action"] = f"Cannot resume: {exc}"
