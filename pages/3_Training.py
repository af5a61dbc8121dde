"""Training: supervised fine-tuning (full, LoRA, QLoRA) with live charts, pause and resume."""

import streamlit as st

from core.jobs import lifecycle as jobs
from core.kinds import traits
from ui import access, common, forms, training

common.setup_page("Training", "model_training")
st.title("Fine-tuning")
jobs_slot = st.container()  # the live jobs panel, unless the run shown below is live
forms.last_submitted()
training.follow()  # a run just started or resumed: show it
forms.keep("sft_")  # the form's values, while the Runs tab is open and the form is not drawn

# lazy tabs: only the open tab is drawn. The browser re-renders every element on
# the page at each live refresh, so a form on a closed tab would cost the job
# CPU every second (bench/README.md, "With the app open").
new, runs = st.tabs(["New run", "Runs"], key="train_tab", on_change="rerun")
live_run = False

if not runs.open:
    with new:
        spec = training.spec_form()
        if spec is not None and st.button("Start training", type="primary", key="train_start", disabled=not access.can_run()):
            forms.submit(lambda: spec, on_started=training.show_run)
else:
    with runs:
        run = training.pick_run([j for j in jobs.list_jobs() if traits(j.kind).trains], "train_pick", "No training runs yet.")
        if run is not None:
            live_run = training.run_panel(run.id)

if not live_run:
    with jobs_slot:
        common.live_jobs_panel()  # a live run's panel follows the other jobs itself: one refresh, not two
