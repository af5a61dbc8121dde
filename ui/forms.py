"""Form pieces shared by the pages: a widget per spec field (its type, choices,
range, default and doc come from the spec), submit with clear errors, the
replay command of what was started; model details, rename and delete."""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core.data import registry as datasets
from core.format import human_bytes, human_count
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.data import files
from core.spec import Spec, SpecError
from ui import access

VIEWER = "A viewer reads everything here; starting jobs needs the member role (ask an admin)."

_SPEC_DEFAULT = object()


def field(spec: type[Spec], name: str, label: str, *, key: str, where: Any = st, default: Any = _SPEC_DEFAULT,
          horizontal: bool = False, **widget: Any) -> Any:
    """The widget for one field of a spec: a select box (or radio) of its choices,
    a checkbox, a number input within its range, or a text input; its default
    (unless the page gives one, e.g. from a preset) and its doc as the help."""
    value = spec.default(name) if default is _SPEC_DEFAULT else default
    kind, choices, (low, high) = spec.base_type(name), spec.choices(name), spec.bounds(name)
    _labels()[spec.flag(name)] = label  # messages naming the CLI flag name this control instead
    widget.setdefault("help", spec.doc(name))
    if choices:
        options = list(choices)
        index = options.index(value) if value in options else 0
        if horizontal:
            return where.radio(label, options, index=index, horizontal=True, key=key, **widget)
        return where.selectbox(label, options, index=index, key=key, **widget)
    if kind is bool:
        return where.checkbox(label, value=bool(value), key=key, **widget)
    if kind in (int, float):
        cast = int if kind is int else float
        widget.setdefault("min_value", None if low is None else cast(low))
        widget.setdefault("max_value", None if high is None else cast(high))
        number = where.number_input(label, value=None if value is None else cast(value), step=cast(1) if kind is int else None, key=key, **widget)
        return None if number is None else cast(number)
    return where.text_input(label, value="" if value is None else str(value), key=key, **widget)


def keep(prefix: str) -> None:
    """Widgets whose key starts with `prefix` keep their values through runs that
    do not draw them. Streamlit forgets a widget not drawn in a run; a page that
    leaves a form out while another tab is open (each widget drawn costs the
    browser work on every live refresh) calls this at its top. No button may
    have such a key: a button's value cannot be set."""
    kept = st.session_state.setdefault(f"_kept_{prefix}", {})
    for key, value in kept.items():
        if key not in st.session_state:
            st.session_state[key] = value
    kept.update({k: v for k, v in st.session_state.items() if isinstance(k, str) and k.startswith(prefix)})


def _labels() -> dict[str, str]:
    """CLI flag -> the label of the control that sets it, for the controls seen so far."""
    return st.session_state.setdefault("_control_labels", {})


# Commands that messages suggest, and where a page user finds the same
PAGE_PLACES = {
    r"\(python -m core export merge [^)]*\)": "(the Export page: 'Merged model'; or the run's 'Merge the adapter into a full model' button on the Training page)",
}


def page_words(message: str) -> str:
    """A message written for the command line, told in the page's words: each
    `--flag` of a control this session has shown becomes the control's label."""
    import re

    for pattern, place in PAGE_PLACES.items():
        message = re.sub(pattern, place, message)
    labels = _labels()

    def control(m: re.Match) -> str:
        flag = m.group(1)
        return f"the \"{labels[flag]}\" control" if flag in labels else m.group(0)

    return re.sub(r"(?<![\w-])--(?:no-)?([a-z][a-z0-9-]*)", control, message)


def submit(make_spec: Callable[[], Any], on_started: Callable[[int], None] | None = None) -> None:
    """Build the spec and queue it. A refusal (validation, a name taken) writes
    nothing and is shown at the top of the page and as a toast, not below the
    button where it is easy to miss; `on_started(job_id)` lets the page follow."""
    try:
        spec = with_runner(make_spec())
        job_id = jobs.submit(spec, by=access.actor())
    except (SpecError, ValueError) as exc:
        _refused(f"Not started: {page_words(str(exc))}")
    except SQLAlchemyError as exc:
        _refused(f"Not started: the database refused it ({type(exc).__name__}); please try again.")
    # kept in the session and shown at the top: the live panel reruns the page
    # as soon as the job starts, which would wipe a message shown only here
    st.session_state.pop("submit_refused", None)
    st.session_state["last_submitted"] = {
        "job_id": job_id,
        "title": spec.title(),
        "cli": spec.replay() + " --wait",
        "yaml": spec.to_yaml(),
    }
    if on_started is not None:
        on_started(job_id)
    st.rerun()


def with_runner(spec: Spec) -> Spec:
    """The spec, set to run where the sidebar says (ui.common.runner_choice)."""
    chosen = st.session_state.get("runner", "local")
    gpus = int(st.session_state.get("runner_gpus") or 0) if chosen == "ray" else 0
    if (spec.runner, spec.gpus) == (chosen, gpus):
        return spec
    return type(spec)(**{**spec.model_dump(), "runner": chosen, "gpus": gpus})


def start(spec: Spec, label: str, key: str, on_started: Callable[[int], None] | None = None) -> None:
    """Below a form: its command line (folded) and the button that starts it
    (a job waits with --wait; a service runs until stopped, so it does not)."""
    try:
        spec = with_runner(spec)
    except (SpecError, ValueError):
        pass  # the button says why
    with st.expander("The same from a terminal", expanded=False):
        st.code(spec.replay() + ("" if spec.service else " --wait"), language="bash")
    if st.button(label, type="primary", key=key, disabled=not access.can_run(), help=None if access.can_run() else VIEWER):
        submit(lambda: spec, on_started=on_started)


def _refused(message: str) -> None:
    st.session_state["submit_refused"] = message
    st.session_state.pop("last_submitted", None)
    st.rerun()


def last_submitted() -> None:
    """At the top of a page: a refused submission, or the latest job started
    here with its command line while it runs; when it has ended, a toast says
    how, and the banner goes. All in one container that is always there, so
    the elements below (the page's tabs) keep their place and their state when
    the banner comes or goes."""
    with st.container():
        _last_submitted()


def _last_submitted() -> None:
    refused = st.session_state.pop("submit_refused", None)
    if refused:
        st.error(refused, icon=":material/block:")
        st.toast(refused[:200], icon=":material/block:")
    done = st.session_state.get("last_submitted")
    if not done:
        return
    try:
        job = jobs.get(done["job_id"])
    except jobs.JobNotFound:
        job = None
    if job is None or job.status not in jobs.ACTIVE:
        st.session_state.pop("last_submitted")
        if job is not None:
            st.toast(f"Job {job.id} {job.status}: {job.title}", icon=STATUS_TOAST.get(job.status))
        return
    st.success(f"Started job {done['job_id']}: {done['title']}. Follow it above or on the **Jobs** page.")
    with st.expander("The same from a terminal"):
        st.code(done["cli"], language="bash")
        st.caption("Or save this as `run.yaml` and run `python -m core run run.yaml --wait`:")
        st.code(done["yaml"], language="yaml")


STATUS_TOAST = {"succeeded": ":material/check_circle:", "failed": ":material/error:", "paused": ":material/pause_circle:"}


def dims_inputs(spec: type[Spec]) -> dict[str, Any]:
    c = st.columns(5)
    labels = {"n_layer": ("Layers", "dim_layers"), "hidden_size": ("Hidden size", "dim_hidden"), "n_head": ("Heads", "dim_heads"),
              "context_length": ("Context", "dim_context"), "vocab_size": ("Vocab", "dim_vocab")}
    return {name: field(spec, name, label, key=key, where=col) for col, (name, (label, key)) in zip(c, labels.items())}


def model_details(m: dict) -> None:
    cols = st.columns(5)
    cols[0].metric("Status", m["status"])
    cols[1].metric("Parameters", human_count(m["num_parameters"]))
    cols[2].metric("Context", m["context_length"] or "-")
    cols[3].metric("On disk", human_bytes(m["size_bytes"]))
    cols[4].metric("Dtype", m["dtype"] or "-")
    if m.get("owner"):
        st.caption(f"Owner: **{m['owner']}**")
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
    """Rename and delete (with a confirmation box) a model or a data set: for its
    owner or an admin (others are told whose it is)."""
    registry = models if what == "model" else datasets
    errors = (SpecError, models.ModelError, files.DatasetError)
    key = f"{what.replace(' ', '_')}_{m['id']}"
    if not access.may_change(m.get("owner_id")):
        st.caption(f"This {what} belongs to {m.get('owner') or 'nobody yet'}: only its owner or an admin may rename or delete it.")
        return
    left, right = st.columns(2)
    with left.form(f"rename_{key}"):
        new_name = st.text_input("New name", value=m["name"], key=f"rename_name_{key}")
        if st.form_submit_button("Rename"):
            try:
                registry.rename(m["id"], new_name, by=access.actor())
                st.rerun()
            except errors as exc:
                st.error(str(exc))
    with right:
        size = f" ({human_bytes(m['size_bytes'])})" if m.get("size_bytes") else ""
        sure = st.checkbox(f"Delete '{m['name']}' and its files{size}", key=f"delete_sure_{key}")
        if st.button(f"Delete {what}", key=f"delete_{key}", disabled=not sure, type="secondary"):
            try:
                registry.delete(m["id"], by=access.actor())
                st.toast(f"Deleted '{m['name']}'")
                st.rerun()
            except errors as exc:
                st.error(str(exc))
