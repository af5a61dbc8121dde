"""Jobs: every job with status, progress, timing, command, log; cancel."""

import streamlit as st

from core.jobs import lifecycle as jobs
from ui import common, live

common.setup_page("Jobs", "work_history")
st.title("Jobs")
st.caption("Jobs run in their own processes: closing this tab or restarting the app does not stop them.")
common.live_jobs_panel()
common.ray_cluster_settings()
common.allowed_folders()

status = st.segmented_control(
    "Show", ["all", *jobs.ACTIVE, *jobs.TERMINAL], default="all", key="jobs_filter"
)
rows = jobs.list_jobs(status=None if status in (None, "all") else status)
if not rows:
    st.info("No jobs yet.")
    common.audit_trail()
    st.stop()
by_id = {j.id: j for j in rows}
chosen = st.selectbox("Job", list(by_id), format_func=lambda i: common.job_label(by_id[i]), key="job_pick")


# the table is redrawn when a job starts or ends (the live panel above reruns the
# page then; it shows the running jobs' progress as they move)
common.jobs_table(rows, key="jobs_table")


@st.fragment
def details() -> None:
    """Live while the chosen job is active (rerun when it moves); its chart is
    rebuilt only on new points."""
    job = jobs.get(chosen)
    if job.status in jobs.ACTIVE:
        live.follow(chosen)
    common.job_details(job)


details()
common.audit_trail()
