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
        forms.start(spec, "Start evaluation", key="eval_start")

with results:
    evaluation.results_panel()

with runs:
    evaluation.compare_runs_panel()

with samples:
    evaluation.samples_panel()

with rubrics:
    evaluation.rubrics_panel()
