"""Data sets: import (upload, path or sample) with every row checked; preview as the model sees it."""

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from core.data import files
from core.data import registry as datasets
from core.data.importer import ImportDatasetSpec
from ui import access, common, data, forms

common.setup_page("Datasets", "dataset")
st.title("Data sets")
common.live_jobs_panel()
forms.last_submitted()

yours, add = st.tabs(["Your data sets", "Import"])

with add:
    source = st.radio("From", ["Sample data set", "Upload", "Path on this machine"], horizontal=True, key="data_source")
    path = None
    if source == "Sample data set":
        sample = st.selectbox("Sample", list(files.SAMPLE_FILES), key="data_sample")
        path = files.SAMPLES / sample
    elif source == "Upload":
        upload = st.file_uploader("JSONL, JSON, CSV or Parquet", type=["jsonl", "ndjson", "json", "csv", "parquet"], key="data_upload",
                                  disabled=not access.can_run())
        if upload is not None:
            if st.session_state.get("upload_id") != upload.file_id:
                st.session_state.upload_id, st.session_state.upload_path = upload.file_id, str(data.save_upload(upload))
            path = Path(st.session_state.upload_path)
    else:
        typed = st.text_input("File path", key="data_path", placeholder="/path/to/data.jsonl", help=common.PATHS_HELP)
        path = common.server_path(typed, "file") if typed else None

    if path is not None:
        fmt = st.selectbox("Format", ["detect", *files.FORMATS], key="data_format")
        try:
            columns, norm = data.check_file(str(path), path.stat().st_mtime, None if fmt == "detect" else fmt, "{}")
        except (files.DatasetError, OSError) as exc:
            st.error(str(exc))
            st.stop()
        st.caption(f"Format **{norm.format}** · columns: " + ", ".join(f"{k} ← `{v}`" for k, v in norm.mapping.items()))
        data.problems_table(norm)
        if norm.rows:
            st.dataframe(pd.DataFrame([{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in norm.rows[:20]]), hide_index=True, key="data_head")
            _, tok = data.tokenizer_choice("import_tokenizer")
            if tok is not None:
                data.rendered_example(norm.format, norm.rows[0], tok)
        default_name = files.SAMPLE_FILES.get(path.name, (path.stem, None))[0]
        with st.form("import_dataset"):
            name = st.text_input("Name", value=default_name, key=f"data_name_{path.name}")
            drop = forms.field(ImportDatasetSpec, "drop_bad_rows", "Drop the bad rows (otherwise the file is refused)", key="data_drop", disabled=not norm.problems)
            low, high = ImportDatasetSpec.bounds("validation_fraction")
            val = st.slider("Validation share", float(low), float(high), ImportDatasetSpec.default("validation_fraction"), 0.05, key="data_val",
                            help=ImportDatasetSpec.doc("validation_fraction"))
            if st.form_submit_button("Import", type="primary", disabled=not access.can_run()):
                forms.submit(lambda: ImportDatasetSpec(path=str(path), name=name, format=norm.format, drop_bad_rows=drop, validation_fraction=val))

with yours:
    rows = [datasets.dataset_dict(d) for d in datasets.list_datasets()]
    if not rows:
        st.info("No data sets yet: import one of the samples from the **Import** tab.")
    else:
        table = pd.DataFrame([{k: r[k] or "" for k in ("id", "name", "owner", "status", "format", "num_rows", "fingerprint")} for r in rows])
        st.dataframe(table, hide_index=True, width="stretch", key="datasets_table")
        by_id = {r["id"]: r for r in rows}
        chosen = by_id[st.selectbox("Data set", list(by_id), format_func=lambda i: f"#{i} {by_id[i]['name']}", key="dataset_pick")]
        if chosen["status"] == "available":
            data.details(chosen)
            split = datasets.load(datasets.get(chosen["id"]))["train"]
            index = st.number_input("Row", 0, len(split) - 1, 0, key="dataset_row")
            _, tok = data.tokenizer_choice("dataset_tokenizer")
            if tok is not None:
                data.rendered_example(chosen["format"], split[int(index)], tok)
        forms.rename_and_delete(chosen, what="data set")
