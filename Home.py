"""Dashboard: counts, running jobs with live progress, recent activity, the machine.

    bash scripts/start.sh   (streamlit run app.py: these pages and their live API)
"""

import streamlit as st

from core import charts
from core.jobs import lifecycle as jobs
from core.format import human_bytes, inert_markdown
from ui import common

common.setup_page("Dashboard", "dashboard")
st.title("LLM Development Platform")
st.caption("Create or import a model, fine-tune and align it, evaluate, chat, export and serve it.")

common.counts_row()

st.subheader("Running jobs")
common.live_jobs_panel()

left, right = st.columns([3, 2])
with left:
    st.subheader("Recent activity")
    st.caption("Times in UTC.")
    events = jobs.recent_events(15)
    if not events:
        st.info("Nothing yet. Start on the **Models** page: add the starter model or create one from scratch.")
    for event in events:
        st.markdown(f"`{event.created_at:%Y-%m-%d %H:%M:%S}` {inert_markdown(event.message)}")
with right:
    st.subheader("This machine")
    info = common.machine_info()
    st.markdown(
        f"**{info['host']}** · {info['cpu']} · {info['cores']} cores  \n"
        f"Memory: {human_bytes(info['memory_available'])} free of {human_bytes(info['memory_total'])}  \n"
        f"Python {info['python']}"
    )
    if info["gpus"]:
        for gpu in info["gpus"]:
            st.markdown(f"GPU: **{gpu['name']}** · {human_bytes(gpu['memory_total'])}")
    else:
        st.markdown("GPU: none (jobs run on the CPU)")
    counts = jobs.counts_by_status()
    if counts:
        st.plotly_chart(charts.jobs_by_status_figure(counts), key="jobs_by_status")
