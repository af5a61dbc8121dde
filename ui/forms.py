"""Form pieces for the Models page: details, rename/delete, submit with clear errors."""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core import datasets, jobs, models
from core.format import human_bytes, human_count
from core.specs import SpecError


def submit(make_spec: Callable[[], Any]) -> None:
    """Build the spec (validation errors are shown, nothing is written) and queue it."""
    try:
        spec = make_spec()
        job_id = jobs.submit(spec)
    except (SpecError, ValueError) as exc:
        st.error(f"Not started: {exc}")
        return
    except SQLAlchemyError as exc:
        st.error(f"Not started: the database refused it ({type(exc).__name__}); please try again.")
        return
    # kept in the session and shown at the top: the live panel reruns the page
    # as soon as the job starts, which would wipe a message shown only here
    st.session_state["last_submitted"] = {
        "job_id": job_id,
        "title": spec.title(),
        "cli": spec.cli() + " --wait",
        "yaml": spec.to_yaml() if hasattr(spec, "to_yaml") else None,
    }
    st.rerun()


def last_submitted() -> None:
    """The confirmation of the latest submission, with its command line."""
    done = st.session_state.get("last_submitted")
    if not done:
        return
    st.success(f"Started job {done['job_id']}: {done['title']}. Follow it above or on the **Jobs** page.")
    st.caption("The same from a terminal:")
    if done.get("yaml"):
        st.code(done["yaml"], language="yaml")
        st.caption("saved as spec.yaml, then:")
    st.code(done["cli"], language="bash")


def dims_inputs() -> dict[str, Any]:
    c = st.columns(5)
    return {
        "n_layer": c[0].number_input("Layers", min_value=1, value=None, step=1, key="dim_layers"),
        "hidden_size": c[1].number_input("Hidden size", min_value=8, value=None, step=8, key="dim_hidden"),
        "n_head": c[2].number_input("Heads", min_value=1, value=None, step=1, key="dim_heads"),
        "context_length": c[3].number_input("Context", min_value=16, value=None, step=16, key="dim_context"),
        "vocab_size": c[4].number_input("Vocab", min_value=300, value=None, step=256, key="dim_vocab"),
    }


def model_details(m: dict) -> None:
    cols = st.columns(5)
    cols[0].metric("Status", m["status"])
    cols[1].metric("Parameters", human_count(m["num_parameters"]))
    cols[2].metric("Context", m["context_length"] or "-")
    cols[3].metric("On disk", human_bytes(m["size_bytes"]))
    cols[4].metric("Dtype", m["dtype"] or "-")
    if m["error"]:
        st.error(m["error"])
    details = m["details"] or {}
    row = models.get(m["id"])
    st.markdown(
        f"**Architecture** {m['architecture'] or '-'} ({m['model_type'] or '-'}) · "
        f"**vocab** {m['vocab_size'] or '-'} · **tokenizer** {details.get('tokenizer', '-')} · "
        f"**chat template** {'yes' if m['has_chat_template'] else 'no'}  \n"
        f"**Lineage** {' → '.join(models.lineage(row))}  \n"
        f"**Folder** `{m['path'] or '-'}`"
    )
    if details.get("sample") is not None:
        st.markdown(f"**Test question** {details.get('sample_prompt')}  \n**Answer** {details['sample'] or '(empty)'}")


def rename_and_delete(m: dict, what: str = "model") -> None:
    """Rename and delete (with a confirmation box) a model or a data set."""
    registry = models if what == "model" else datasets
    errors = (SpecError, models.ModelError, datasets.DatasetError)
    key = f"{what.replace(' ', '_')}_{m['id']}"
    left, right = st.columns(2)
    with left.form(f"rename_{key}"):
        new_name = st.text_input("New name", value=m["name"], key=f"rename_name_{key}")
        if st.form_submit_button("Rename"):
            try:
                registry.rename(m["id"], new_name)
                st.rerun()
            except errors as exc:
                st.error(str(exc))
    with right:
        size = f" ({human_bytes(m['size_bytes'])})" if m.get("size_bytes") else ""
        sure = st.checkbox(f"Delete '{m['name']}' and its files{size}", key=f"delete_sure_{key}")
        if st.button(f"Delete {what}", key=f"delete_{key}", disabled=not sure, type="secondary"):
            try:
                registry.delete(m["id"])
                st.toast(f"Deleted '{m['name']}'")
                st.rerun()
            except errors as exc:
                st.error(str(exc))
