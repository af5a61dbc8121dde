"""RLHF: align a policy with a reward model, DPO or GRPO; live charts, rollouts, scores."""

import streamlit as st

from core.jobs import lifecycle as jobs
from ui import access, common, forms, rlhf, training

common.setup_page("RLHF", "model_training")
st.title("Alignment (RLHF)")
jobs_slot = st.container()  # the live jobs panel, unless the run shown below is live
forms.last_submitted()
training.follow("rl_tab", "rl_pick")  # a run just started or resumed: show it
forms.keep("rl_")  # the form's values while another tab is open (buttons: rlhf_ keys)

rlhf.pipeline()
# lazy tabs: only the open tab is drawn (each element costs the browser at every live refresh)
new, runs, score = st.tabs(["New run", "Runs", "Score an answer"], key="rl_tab", on_change="rerun")
live_run = False

if new.open:
    with new:
        spec = rlhf.spec_form()
        if spec is not None and st.button("Start", type="primary", key="rlhf_start", disabled=not access.can_run()):
            forms.submit(lambda: spec, on_started=training.show_run)
elif runs.open:
    with runs:
        run = training.pick_run([j for j in jobs.list_jobs() if j.kind in rlhf.alignment_kinds()], "rl_pick", "No alignment runs yet.")
        if run is not None:
            live_run = training.run_panel(run.id)
            rlhf.rollouts(run)
            rlhf.before_after(run)
else:
    with score:
        rlhf.score_box()

if not live_run:
    with jobs_slot:
        common.live_jobs_panel()
