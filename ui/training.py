"""Training page pieces: the run form with its YAML, the live run panel."""

from __future__ import annotations

from typing import Any, Optional

import streamlit as st

from core import charts, datasets, jobs, models
from core.format import human_seconds
from core.specs import SFT_PRESETS, MergeAdapterSpec, SFTSpec, SpecError
from ui import forms

PRESET_LABELS = {"quick": "Quick try (CPU, minutes)", "standard": "Standard"}


def spec_form() -> Optional[SFTSpec]:
    """The new-run form (no st.form: the YAML below follows every change)."""
    bases = [m for m in models.list_models() if m.status == "available" and m.source != "adapter"]
    data = [d for d in datasets.list_datasets() if d.status == "available" and d.format in ("text", "instruction", "chat")]
    if not bases or not data:
        st.info("Training needs a model (Models page) and a text, instruction or chat data set (Datasets page).")
        return None
    preset = st.radio("Preset", list(PRESET_LABELS), format_func=PRESET_LABELS.get, horizontal=True, key="sft_preset")
    p = SFT_PRESETS[preset]
    c1, c2, c3 = st.columns(3)
    model = c1.selectbox("Base model", [m.name for m in bases], key="sft_model")
    dataset = c2.selectbox("Data set", [d.name for d in data], key="sft_dataset")
    method = c3.radio("Method", ["lora", "full", "qlora"], horizontal=True, key="sft_method")
    if method == "qlora":
        from core.hardware import qlora_unavailable

        why = qlora_unavailable()
        if why:
            st.warning(f"QLoRA cannot run here: {why}. Choose LoRA.")
    c1, c2, c3, c4 = st.columns(4)
    # the key follows the choices: a keyed input would keep a stale default
    output_name = c1.text_input("Output name", value=f"{model}-{method}-{dataset}"[:90], key=f"sft_output_{model}_{method}_{dataset}")
    max_steps = c2.number_input("Max steps (0 = epochs)", 0, 1_000_000, p.get("max_steps", 0), key=f"sft_steps_{preset}")
    learning_rate = c3.number_input("Learning rate", 0.0, 1.0, p["learning_rate"], format="%.1e", key=f"sft_lr_{preset}")
    batch_size = c4.number_input("Batch size", 1, 1024, p["batch_size"], key=f"sft_bs_{preset}")
    with st.expander("Advanced"):
        a = st.columns(4)
        values: dict[str, Any] = dict(
            epochs=a[0].number_input("Epochs", 0.1, 100.0, float(p.get("epochs", 1.0)), key=f"sft_epochs_{preset}"),
            max_length=a[1].number_input("Max length", 16, 32768, p["max_length"], key=f"sft_len_{preset}"),
            grad_accum=a[2].number_input("Gradient accumulation", 1, 1024, 1, key="sft_accum"),
            warmup_steps=a[3].number_input("Warm-up steps", 0, 100_000, 0, key="sft_warmup"),
            scheduler=a[0].selectbox("Scheduler", ["linear", "cosine", "constant", "constant_with_warmup"], key="sft_sched"),
            weight_decay=a[1].number_input("Weight decay", 0.0, 1.0, 0.0, key="sft_wd"),
            eval_steps=a[2].number_input("Evaluate every (steps, 0 = at the end)", 0, 1_000_000, p["eval_steps"], key=f"sft_eval_{preset}"),
            save_steps=a[3].number_input("Checkpoint every (steps)", 1, 1_000_000, p["save_steps"], key=f"sft_save_{preset}"),
            keep_checkpoints=a[3].number_input(
                "Checkpoints kept (0 = all)", 0, 10_000, 2, key="sft_keep",
                help="Keep every checkpoint to evaluate the model over training steps (Evaluation page).",
            ),
            lora_r=a[0].number_input("LoRA r", 1, 1024, 8, key="sft_r"),
            lora_alpha=a[1].number_input("LoRA alpha", 1, 4096, 16, key="sft_alpha"),
            lora_dropout=a[2].number_input("LoRA dropout", 0.0, 0.9, 0.05, key="sft_dropout"),
            lora_targets=a[3].text_input("LoRA target modules", "all-linear", key="sft_targets"),
            seed=a[0].number_input("Seed", 0, 2**31 - 1, 0, key="sft_seed"),
            packing=a[1].checkbox("Packing", False, key="sft_packing"),
            completion_only=a[2].checkbox("Loss on answers only", True, key="sft_completion"),
        )
    try:
        spec = SFTSpec(
            model=model, dataset=dataset, output_name=output_name, method=method,
            max_steps=int(max_steps), learning_rate=float(learning_rate), batch_size=int(batch_size),
            **{k: (int(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in values.items()},
        )
    except SpecError as exc:
        st.error(str(exc))
        return None
    with st.expander("Copy to reproduce: the spec file and the command", expanded=False):
        st.code(spec.to_yaml(), language="yaml")
        st.code("python -m core train spec.yaml --wait", language="bash")
    return spec


def run_panel(job_id: int) -> None:
    """One training run, live: progress, charts (with the runs it resumed), controls."""
    job = jobs.get(job_id)

    @st.fragment(run_every=1.0 if job.status in jobs.ACTIVE else None)
    def panel() -> None:
        job = jobs.get(job_id)
        p = jobs.progress(job)
        cols = st.columns(5)
        cols[0].metric("Status", job.status)
        cols[1].metric("Step", f"{p.step}/{p.total or '?'}")
        cols[2].metric("Elapsed", human_seconds(p.elapsed_s))
        cols[3].metric("ETA", human_seconds(p.eta_s) if job.status == "running" else "-")
        series = jobs.metrics_with_history(job_id)
        loss = series.get("train_loss") or []
        cols[4].metric("Train loss", f"{loss[-1][1]:.3f}" if loss else "-")
        st.progress(p.fraction or 0.0, text=p.message)
        if job.error:
            (st.info if job.status == "cancelled" else st.error)(job.error)
        resumed_at = []
        current = job
        while current.resumed_from:
            first = jobs.metrics(current.id).get("train_loss")
            if first:
                resumed_at.append(first[0][0])
            current = jobs.get(current.resumed_from)
        if series:
            st.plotly_chart(charts.training_figure(series, resumed_at), key=f"train_chart_{job_id}")
        else:
            st.caption("The charts fill in as soon as the first step is logged.")
        controls(job)

    panel()


def controls(job) -> None:
    c = st.columns(2)
    from core.train_jobs import has_checkpoint

    if job.status in jobs.ACTIVE and job.cancel_requested_at is None:
        c[0].button("Pause (checkpoint)", key=f"pause_{job.id}", on_click=_stop, args=(job.id, "pause"))
        c[1].button("Cancel (no checkpoint)", key=f"stop_{job.id}", on_click=_stop, args=(job.id, "cancel"))
    elif job.status in jobs.ACTIVE:
        c[0].caption(f"{'Pausing: writing a checkpoint' if job.stop_mode == 'pause' else 'Stopping'}…")
        c[1].button("Kill now", key=f"kill_{job.id}", on_click=_stop, args=(job.id, "cancel"), help="no checkpoint")
    elif job.status in ("cancelled", "failed") and has_checkpoint(job.id):
        c[0].button("Resume from the last checkpoint", key=f"resume_{job.id}", type="primary", on_click=_resume, args=(job.id,))
    out_id = (job.result or {}).get("model_id")
    if job.status == "succeeded" and out_id:
        out = models.get(out_id) if out_id in {m.id for m in models.list_models()} else None
        if out is not None and out.source == "adapter":
            if c[1].button("Merge the adapter into a full model", key=f"merge_{job.id}"):
                forms.submit(lambda: MergeAdapterSpec(model=str(out.id), output_name=f"{out.name}-merged"[:100]))
    if st.session_state.get("train_action"):
        st.toast(st.session_state.pop("train_action"))


def _stop(job_id: int, mode: str) -> None:
    st.session_state["train_action"] = f"Job {job_id}: {jobs.cancel(job_id, mode=mode)}"


def _resume(job_id: int) -> None:
    from core.train_jobs import resume

    try:
        new_id = resume(job_id)
        st.session_state["train_action"] = f"Resuming job {job_id} as job {new_id}"
        st.session_state["train_pick"] = new_id
    except (SpecError, ValueError) as exc:
        st.session_state["train_action"] = f"Cannot resume: {exc}"
