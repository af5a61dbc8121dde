"""Datasets page pieces: upload and check, preview as the model sees it, details."""

from __future__ import annotations

import html
import json
import uuid
from pathlib import Path
from typing import Optional

import pandas as pd
import streamlit as st

from core import charts
from core.access import paths
from core.data import files
from core.data.render import SFT_FORMATS, render_segments
from core.format import human_count
from core.models import registry as models
from storage.db import data_home


def save_upload(upload, kind: str = "") -> Path:
    """Keep an uploaded file under the data home's uploads/ (a job reads it from there;
    the app may: core/access/paths.py), in `kind`'s folder ("code": reward files)."""
    folder = paths.uploads() / kind if kind else paths.uploads()
    folder.mkdir(parents=True, exist_ok=True)
    name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in Path(upload.name).name)[-100:]  # no markup, no ../
    path = folder / f"{uuid.uuid4().hex[:8]}-{name}"
    path.write_bytes(upload.getvalue())
    return path


MAX_FOLDER_BYTES = 256 * 2**20
MAX_FOLDER_FILES = 5000


def save_folder_zip(upload, kind: str) -> Path:
    """An uploaded .zip unpacked into a folder of its own under uploads/`kind` (an lm-eval
    task folder): at most 5000 files and 256 MB unpacked; names are kept inside the
    folder (zipfile drops '..' and leading '/'), links arrive as plain files. ValueError
    saying what is wrong, and nothing kept, otherwise."""
    import io
    import shutil
    import zipfile

    try:
        archive = zipfile.ZipFile(io.BytesIO(upload.getvalue()))
    except zipfile.BadZipFile:
        raise ValueError(f"{upload.name} is not a .zip archive") from None
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) > MAX_FOLDER_FILES or sum(m.file_size for m in members) > MAX_FOLDER_BYTES:
        raise ValueError(f"{upload.name} holds more than {MAX_FOLDER_FILES} files or {MAX_FOLDER_BYTES // 2**20} MB unpacked")
    folder = paths.uploads() / kind / uuid.uuid4().hex[:8]
    folder.mkdir(parents=True)
    try:
        archive.extractall(folder)
    except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise ValueError(f"{upload.name} could not be unpacked: {exc}") from None
    return folder


@st.cache_data(ttl=60, show_spinner="Checking every row...")
def check_file(path: str, mtime: float, fmt: Optional[str], mapping_json: str):
    """read + normalize, cached per file version and choice (pure, no side effects)."""
    parsed = files.read_file(Path(path))
    return parsed.columns, files.normalize(parsed, fmt, json.loads(mapping_json))


@st.cache_resource(show_spinner=False)
def tokenizer_for(model_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def tokenizer_choice(key: str):
    """A select box of available models; returns (model row, tokenizer) or (None, None)."""
    available = [m for m in models.list_models() if m.status == "available"]
    if not available:
        st.info("Add or create a model to see rows as a model's tokenizer renders them.")
        return None, None
    by_id = {m.id: m for m in available}
    chosen = st.selectbox("Tokenizer of", list(by_id), format_func=lambda i: by_id[i].name, key=key)
    row = by_id[chosen]
    return row, tokenizer_for(str(data_home() / row.path))


def rendered_example(fmt: str, row: dict, tokenizer) -> None:
    """One row exactly as training feeds it: grey = prompt (no loss), green = learned."""
    if fmt not in SFT_FORMATS:
        st.caption(f"{fmt} data is used by alignment jobs, not by supervised fine-tuning.")
        st.json(row)
        return
    parts = []
    for text, trained in render_segments(fmt, row, tokenizer):
        style = "background:#1f3d2b;color:#d2f5dc" if trained else "color:#9aa4b2"
        parts.append(f'<span style="{style}">{html.escape(text)}</span>')
    st.html(
        '<pre style="white-space:pre-wrap;font-size:0.85rem;padding:0.6rem;border:1px solid #333;border-radius:6px">'
        + "".join(parts)
        + "</pre>"
    )
    st.caption("Grey: the prompt, no loss. Green: what the model learns to write (special tokens shown as they are).")


def problems_table(norm: files.Normalized) -> None:
    if not norm.rows and not norm.problems:
        st.error("The file has no rows: give a file with at least one record.")
        return
    if not norm.problems:
        st.success(f"All {len(norm.rows)} rows are valid ({norm.format}).")
        return
    st.error(f"{len(norm.problems)} bad row(s); {len(norm.rows)} good.")
    st.dataframe(
        pd.DataFrame([{"line": p.line, "problem": p.message} for p in norm.problems[:500]]),
        hide_index=True,
        width="stretch",
        key="problems_table",
    )


def details(d: dict) -> None:
    det = d["details"]
    tokens = det.get("tokens") or {}
    cols = st.columns(5)
    cols[0].metric("Format", d["format"])
    cols[1].metric("Rows", d["num_rows"])
    cols[2].metric("Train / validation", " / ".join(str(v) for v in det.get("splits", {}).values()) or "-")
    cols[3].metric("Tokens", human_count(tokens.get("total")))
    cols[4].metric("p95 length", tokens.get("p95", "-"))
    st.caption(
        f"Fingerprint `{d['fingerprint']}` · from `{det.get('source_file', d['origin'])}` · columns: "
        + ", ".join(f"{k} ← {v}" for k, v in det.get("mapping", {}).items())
    )
    if det.get("dropped"):
        with st.expander(f"{len(det['dropped'])} row(s) dropped on import"):
            st.dataframe(pd.DataFrame(det["dropped"]), hide_index=True, key=f"dropped_{d['id']}")
    lengths_file = Path(d["path"]) / "token_lengths.json" if d["path"] else None
    if lengths_file and lengths_file.exists():
        st.markdown(f"**Tokens per example** (tokenizer of `{tokens.get('tokenizer_model')}`)")
        st.plotly_chart(charts.token_length_histogram(json.loads(lengths_file.read_text())), key=f"hist_{d['id']}")
