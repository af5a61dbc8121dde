"""Training: supervised fine-tuning (full, LoRA, QLoRA) with live charts, pause and resume."""

import streamlit as st

from core.jobs import lifecycle as jobs
from core.kinds import traits
from ui import common, forms, training

common.setup_page("Training", "model_training")
st.title("Fine-tuning")
common.live_jobs_panel("training")
forms.last_submitted()
training.follow()  # a run just started or resumed: show it

# lazy tabs: the Runs tab runs only when open, so a live run panel on a hidden
# tab costs nothing; the form always runs (a widget not drawn loses its value)
new, runs = st.tabs(["New run", "Runs"], key="train_tab", on_change="rerun")

with new:
    spec = training.spec_form()
    if spec is not None and st.button("Start training", type="primary", key="sft_start"):
        forms.submit(lambda: spec, on_started=training.show_run)

if runs.open:
    with runs:
        sft_jobs = [j for j in jobs.list_jobs() if traits(j.kind).trains]
        if not sft_jobs:
            st.info("No training runs yet.")
        else:
            by_id = {j.id: j for j in sft_jobs}
            if st.session_state.get("train_pick") not in by_id:
                st.session_state["train_pick"] = sft_jobs[0].id
            chosen = st.selectbox("Run", list(by_id), format_func=lambda i: common.job_label(by_id[i]), key="train_pick")
            training.run_panel(chosen)
