"""Export: merged models, verified ONNX graphs and Triton model repositories, each
downloadable; and serving them over an OpenAI-compatible API."""

import streamlit as st

from ui import common, export, forms, serving

common.setup_page("Export", "output")
st.title("Export")
common.live_jobs_panel()
forms.last_submitted()
export.follow()  # an export just started: show it
forms.keep(export.FORM)  # the form's values, while the Exports tab is open and the form is not drawn
forms.keep(serving.FORM)

new, done, serve = st.tabs(["New export", "Exports", "Serve"], key="export_tab", on_change="rerun")

if serve.open:
    with serve:
        serving.serve_tab()
elif not done.open:
    with new:
        spec = export.spec_form()
        if spec is not None:
            forms.start(spec, "Start export", key="export_start", on_started=export.show_export)
        st.caption(
            "Every ONNX graph is verified against PyTorch with onnxruntime (logits on a prompt and a left-padded batch, "
            "greedy tokens with the cache, argmax agreement, speed); the numbers stay with the export, in or out of tolerance."
        )
else:
    with done:
        export.exports_panel()
