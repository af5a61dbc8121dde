"""Streamlit helpers shared by the pages: setup, live job panel, tables, job details.

Only Home.py and pages/ import this; it calls core and renders what comes back.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd
import streamlit as st

from core import charts, config, system
from core.access import accounts, audit, masking, paths
from core.data import registry as datasets
from core.jobs import lifecycle as jobs
from core.jobs import ray_runner
from core.models import registry as models
from core.models import starter
from core.format import human_bytes, human_count, human_seconds
from core.kinds import traits
from storage.db import database_url, get_engine
from ui import access, forms, live

STATUS_ICONS = {
    "queued": ":material/schedule:",
    "running": ":material/autorenew:",
    "succeeded": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
    "paused": ":material/pause_circle:",
    "stopped": ":material/stop_circle:",
}


def _secrets_to_env() -> None:
    """Settings may come from st.secrets on a hosted deployment."""
    try:
        secrets = dict(st.secrets)
    except Exception:  # no secrets file: environment variables only
        return
    for key in config.SECRET_KEYS:
        if key in secrets and not os.environ.get(key):
            os.environ[key] = str(secrets[key])


@st.cache_resource
def _engine(url: str):
    return get_engine(url)


@st.cache_data(ttl=30, show_spinner=False)
def machine_info() -> dict:
    return system.machine_info()


ICONS = Path(__file__).resolve().parent.parent / "assets" / "icons"


def setup_page(title: str, icon: str = "neurology") -> None:
    """Every page starts here. `icon` is a file of assets/icons (shipped with the
    app: a ":material/...:" page icon is fetched from Google's CDN)."""
    st.set_page_config(page_title=f"{title} · LLM Dev Platform", page_icon=str(ICONS / f"{icon}.svg"), layout="wide")
    _secrets_to_env()
    try:
        config.check()
    except ValueError as exc:
        st.error(f"Setting problem: {exc}")
        st.stop()
    try:
        _engine(database_url())
    except Exception as exc:
        st.error(masking.mask(f"Cannot open the database at `{database_url()}`: {exc}"))
        st.stop()
    access.gate()  # sign-in, once an account exists: nothing below is drawn for a visitor without a session
    st.session_state["_control_labels"] = {}  # this page's controls (ui.forms.page_words)
    runner_choice()
    jobs.refresh()  # lost workers and finished queues show correctly from the first paint
    if "starter_checked" not in st.session_state:
        st.session_state.starter_checked = True
        job_id = starter.autostart()
        if job_id is not None:
            st.toast(f"First launch: converting the starter model (job {job_id}).", icon=":material/download:")


def runner_choice() -> None:
    """In the sidebar of every page, when a Ray cluster is set: where the jobs
    started from this session's forms run (ui.forms applies it to each spec)."""
    where = ray_runner.address()
    if not where:
        st.session_state["runner"] = "local"
        return
    st.sidebar.radio(
        "Run new jobs on", ["local", "ray"], key="runner",
        format_func={"local": "This machine", "ray": "Ray cluster"}.get,
        help=f"The Ray cluster at {where} (set on the Jobs page, or LLMDEV_RAY_ADDRESS). A job there writes its "
        "progress to the same database; its data home must be on storage the nodes share.",
    )
    if st.session_state.get("runner") == "ray":
        st.sidebar.number_input("GPUs per job", min_value=0, max_value=64, value=0, step=1, key="runner_gpus",
                                help="What each job asks the cluster for (a training run gets one process per GPU). "
                                "0: the job runs on CPUs and sees no GPU of its node.")


PATHS_HELP = ("A path on the machine the app runs on. Once sign-in is on, only files under the allowed folders "
              "(the Jobs page's \"Allowed folders\") and uploads can be used.")


def server_path(typed: str, want: str = "file") -> Optional[Path]:
    """A path a visitor typed, if this app may read it (core/access/paths.py): else
    the one refusal message (the same for a missing file) and the page stops here."""
    try:
        return paths.usable(typed.strip(), want)
    except ValueError as exc:
        st.error(str(exc))
        st.stop()


def ray_cluster_settings() -> None:
    """The Jobs page's "Ray cluster": where jobs with runner ray go, and whether it
    can take them (an admin sets it)."""
    import os

    where = ray_runner.address()
    with st.expander(f"Ray cluster: {where}" if where else "Ray cluster: none set", expanded=False):
        fixed = bool(os.environ.get(ray_runner.ADDRESS_ENV))
        admin = access.can_admin()
        st.caption(f"Set by {ray_runner.ADDRESS_ENV}." if fixed else
                   "The dashboard address of a Ray cluster (e.g. http://127.0.0.1:8265): jobs can then run there "
                   "(the sidebar's \"Run new jobs on\"). Its nodes need this data home at the same path and, unless the "
                   "cluster is this machine, a PostgreSQL database (DATABASE_URL).")
        typed = st.text_input("Address", value=where, key="ray_address", disabled=fixed or not admin,
                              help=None if admin else "An admin sets the cluster's address.")
        if st.button("Save and check", key="ray_check", disabled=not admin):
            try:
                if not fixed:
                    ray_runner.set_address(typed, by=access.actor())
                found = ray_runner.cluster(ray_runner.address())
            except (ray_runner.RayUnavailable, ValueError) as exc:
                st.error(masking.one_line(str(exc), 600))
            else:
                st.success(f"{len(found.hosts)} node(s) ({', '.join(found.hosts)}): {found.cpus:g} CPUs, "
                           f"{found.gpus:g} GPUs; a probe job saw this data home"
                           + (" (the cluster is this machine)" if found.local else ""))


def job_label(job) -> str:
    return f"#{job.id} {job.title}"


def progress_line(job) -> None:
    """One job's progress bar with step, ETA and what it is doing."""
    p = jobs.progress(job)
    eta = f" · ETA {human_seconds(p.eta_s)}" if p.eta_s is not None else ""
    steps = f"{p.step}/{p.total} · " if p.total else (f"{p.step} · " if p.step else "")
    if traits(job.kind).service:  # runs until stopped: what it is doing says it all
        steps, eta = "", ""
    where = " · on Ray" + (f" ({job.host})" if job.host else "") if job.runner == "ray" else ""
    text = f"{STATUS_ICONS.get(job.status, '')} **{job_label(job)}** · {steps if job.status != 'queued' else ''}{p.message}{eta}{where}"
    st.progress(p.fraction or 0.0, text=text)


def live_jobs_panel() -> None:
    """Running and queued jobs, redrawn on their own when one of them moves (a
    fragment that ui.live reruns: the rest of the page reruns only when a job
    is queued, starts or ends). setup_page has already refreshed the job
    states for this run."""
    watch = live.jobs_watcher()

    @st.fragment
    def panel() -> None:
        watch()
        active = [j for j in jobs.list_jobs(limit=50) if j.status in jobs.ACTIVE]
        # reruns this panel when a job moves (and for its ETA), the page when one starts or ends
        live.follow(refresh_s=10.0 if active else 0)
        if not active:
            st.caption("No job is running.")
            return
        for job in active:
            progress_line(job)

    panel()


def live_figure(job_id: int, key: str, build: Callable[[dict], Any], every_s: float = 0.0) -> tuple[dict, Any]:
    """(metric series, figure) of a job for a live panel, which reruns whenever
    its job moves: both are rebuilt only when a new metric point arrived (core.jobs.lifecycle.
    metrics_signature), and while the job runs at most once per `every_s`;
    otherwise the figure built last time is sent again (the browser redraws a
    changed chart from scratch: that, not the server, is what a live chart costs)."""
    signature = jobs.metrics_signature(job_id)
    kept = st.session_state.get(f"_figure_{key}")
    now = time.monotonic()
    due = kept is None or (kept[0] != signature and (now - kept[3] >= every_s or jobs.get(job_id).status not in jobs.ACTIVE))
    if due:
        series = jobs.metrics_with_history(job_id)
        kept = (signature, series, build(series) if series else None, now)
        st.session_state[f"_figure_{key}"] = kept
    return kept[1], kept[2]


def jobs_frame(rows) -> pd.DataFrame:
    data = []
    names = accounts.owner_names()
    for job in rows:
        p = jobs.progress(job)
        data.append(
            {
                "id": job.id,
                "status": job.status,
                "job": job.title,
                "owner": names.get(job.owner_id, ""),
                "runs on": f"Ray {job.runner_id or ''}".strip() if job.runner == "ray" else "here",
                "progress": p.fraction if p.fraction is not None else 0.0,
                "elapsed": human_seconds(p.elapsed_s),
                "error": f"{job.error_class}: {job.error}" if job.error_class else "",
                "created": job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else "",
            }
        )
    return pd.DataFrame(data)


def jobs_table(rows, key: str) -> None:
    if not rows:
        st.info("No jobs yet.")
        return
    st.dataframe(
        jobs_frame(rows),
        hide_index=True,
        width="stretch",
        key=key,
        column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent")
        },
    )


def job_details(job) -> None:
    """Everything about one job: status, timing, command, metrics, log, cancel."""
    p = jobs.progress(job)
    cols = st.columns(4)
    cols[0].metric("Status", job.status)
    cols[1].metric("Elapsed", human_seconds(p.elapsed_s))
    cols[2].metric("ETA", human_seconds(p.eta_s) if job.status == "running" else "-")
    cols[3].metric("Worker", ("Ray" if job.runner == "ray" else "") + (f" pid {job.pid}" if job.pid else "") or "-")
    progress_line(job)
    if job.runner == "ray":
        node = f" on node {job.host}" if job.host else " (not placed on a node yet)"
        st.caption(f"Runs on the Ray cluster as Ray job `{job.runner_id or 'not submitted yet'}`{node} · "
                   f"[Ray dashboard]({ray_runner.dashboard_url(job)})")
    if job.status == "failed":
        st.error(f"**{job.error_class}**: {masking.mask(forms.page_words(job.error or ''))}")
    elif job.status in jobs.STOPPED:
        st.warning(masking.mask(job.error or job.status))
    st.caption("Replay from a terminal, or run its spec file:")
    st.code(jobs.cli_command(job), language="bash")
    st.code(jobs.spec_file_command(job), language="bash")
    kind = traits(job.kind)
    build = (lambda s: charts.training_figure(s, kind.panels)) if kind.trains else charts.metrics_figure
    # all panels in one figure: redrawn at most every 10 s while the job runs (the
    # Training page follows the loss step by step)
    _, figure = live_figure(job.id, f"metrics_{job.id}", build, every_s=10.0)
    if figure is not None:
        st.plotly_chart(figure, key=f"metrics_{job.id}")
    if job.owner_id is not None or accounts.sign_in_on():
        st.caption(f"Owner: **{accounts.owner_of(job.owner_id) or 'nobody yet'}**")
    if job.status in jobs.ACTIVE and access.may_change(job.owner_id):
        again = job.cancel_requested_at is not None
        st.button(
            "Kill now" if again else "Cancel job",
            key=f"cancel_{job.id}",
            on_click=_cancel,
            args=(job.id,),
            help="A second cancel kills the worker at once" if again else "Graceful stop (SIGTERM)",
        )
    if st.session_state.get("cancel_result"):
        st.toast(st.session_state.pop("cancel_result"))
    with st.expander("Log", expanded=job.status == "failed"):
        tail = jobs.read_log_tail(job.id, 80)
        # a running Ray job's log is read from the copy its node writes into the run folder
        # (no request to the cluster on every redraw); an ended one's from Ray, where also
        # what came before the worker started (or a node that could not write the copy) is
        ray_log = None
        if job.runner == "ray" and job.runner_id and (job.status not in jobs.ACTIVE or not tail):
            ray_log = ray_runner.logs(job)
        if ray_log is not None:
            st.code(masking.mask("\n".join(ray_log.splitlines()[-80:])) or "(empty)", language="text")
            st.caption(f"The Ray job's log ({job.runner_id}); also in {jobs.log_path(job.id)}")
        else:
            st.code(masking.mask(tail) or "(empty)", language="text")
            st.caption(str(jobs.log_path(job.id)) + (f" (the Ray job {job.runner_id}'s log as its node writes it)"
                                                     if job.runner == "ray" else ""))


def _cancel(job_id: int) -> None:
    try:
        st.session_state["cancel_result"] = f"Job {job_id}: {jobs.cancel(job_id, by=access.actor())}"
    except ValueError as exc:  # no longer allowed (signed out since the page was drawn)
        st.session_state["cancel_result"] = f"Job {job_id} not cancelled: {exc}"


def model_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "id": r["id"],
                "name": r["name"],
                "owner": r["owner"] or "",
                "status": r["status"],
                "source": r["source"],
                "architecture": r["architecture"] or "-",
                "parameters": human_count(r["num_parameters"]),
                "context": r["context_length"],
                "size": human_bytes(r["size_bytes"]),
            }
            for r in rows
        ]
    )


def counts_row() -> None:
    by_status = jobs.counts_by_status()
    cols = st.columns(6)
    cols[0].metric("Models", models.count())
    cols[1].metric("Data sets", datasets.count())
    for col, status in zip(cols[2:], ("running", "queued", "succeeded", "failed")):
        col.metric(f"Jobs {status}", by_status.get(status, 0))
    other = [f"{by_status[s]} {s}" for s in jobs.STOPPED if by_status.get(s)]
    if other:
        st.caption(f"Jobs stopped on request: {', '.join(other)}")


def model_choice(rows: list[dict], key: str) -> Optional[dict]:
    if not rows:
        return None
    by_id = {r["id"]: r for r in rows}
    chosen = st.selectbox(
        "Model", list(by_id), format_func=lambda i: f"#{i} {by_id[i]['name']}", key=key
    )
    return by_id.get(chosen)


def audit_trail() -> None:
    """The Jobs page's audit trail: every entry for an admin, one's own for others."""
    with st.expander("Audit trail: who did what", expanded=False):
        try:
            me = access.actor()
        except accounts.Denied:
            return
        rows = audit.entries(200, None if me.role == "admin" else me.name)
        if not rows:
            st.caption("Nothing recorded yet.")
            return
        st.dataframe(pd.DataFrame([
            {"at": r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else "", "user": r.actor, "action": r.action,
             "target": r.target, "ok": "yes" if r.ok else "refused", "detail": r.detail} for r in rows
        ]), hide_index=True, width="stretch", key="audit_table")
        st.caption(("Every entry (newest first)." if me.role == "admin" else "Your own entries (an admin sees everyone's).")
                   + " From a terminal: python -m core audit")


def allowed_folders() -> None:
    """The Jobs page's "Allowed folders": where app visitors may name files (an admin sets them)."""
    import os

    fixed = os.environ.get(paths.ENV, "").strip()
    extra = paths.extra_roots()
    with st.expander(f"Allowed folders: {len(extra)} beyond uploads and samples", expanded=False):
        st.caption("Files that forms may name on this machine (data sets, model folders, corpora, reward files, lm-eval "
                   f"tasks), besides uploads ({paths.uploads()}) and the shipped samples ({paths.ASSETS}). "
                   + (f"Set by {paths.ENV}." if fixed else "One absolute folder per line; an admin saves them."))
        typed = st.text_area("Folders", "\n".join(extra), key="allowed_folders", disabled=bool(fixed) or not access.can_admin())
        if not fixed and access.can_admin() and st.button("Save folders", key="allowed_save"):
            try:
                paths.save_setting(typed.splitlines(), by=access.actor())
                st.toast("Allowed folders saved")
            except ValueError as exc:
                st.error(str(exc))
