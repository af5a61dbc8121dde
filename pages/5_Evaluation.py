"""Evaluation: measure models on your data, compare runs, browse the samples."""

import streamlit as st

from ui import common, evaluation, forms

common.setup_page("Evaluation", "fact_check")
st.title("Evaluation")
common.live_jobs_panel()
forms.last_submitted()

new, results, runs, samples, rubrics = st.tabs(["New evaluation", "Results", "Compare runs", "Samples", "Rubrics"])

with new:
    spec = evaluation.spec_form()
    if spec is not None:
        with st.expander("The same from a terminal", expanded=False):
            st.code(spec.replay() + " --wait", language="bash")
        if st.button("Start evaluation", type="primary", key="eval_start"):
            forms.submit(lambda: spec)

with results:
    evaluation.results_panel()

with runs:
    evaluation.compare_runs_panel()

with samples:
    evaluation.samples_panel()

with rubrics:
    evaluation.rubrics_panel()
