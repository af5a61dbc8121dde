"""Jobs: every job with status, progress, timing, command, log; cancel."""

import streamlit as st

from core.jobs import lifecycle as jobs
from ui import common

common.setup_page("Jobs", "work_history")
st.title("Jobs")
st.caption("Jobs run in their own processes: closing this tab or restarting the app does not stop them.")
common.live_jobs_panel("jobs")

status = st.segmented_control(
    "Show", ["all", "running", "queued", "succeeded", "failed", "cancelled"], default="all", key="jobs_filter"
)
rows = jobs.list_jobs(status=None if status in (None, "all") else status)
if not rows:
    st.info("No jobs yet.")
    st.stop()
by_id = {j.id: j for j in rows}
chosen = st.selectbox("Job", list(by_id), format_func=lambda i: common.job_label(by_id[i]), key="job_pick")


@st.fragment(run_every=1.0 if any(j.status in jobs.ACTIVE for j in rows) else None)
def table_and_details() -> None:
    """Live while any listed job is active; the rest of the page stays put."""
    common.jobs_table(jobs.list_jobs(status=None if status in (None, "all") else status), key="jobs_table")
    common.job_details(jobs.get(chosen))


table_and_details()
