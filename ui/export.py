"""Export page pieces: the new-export form (merged model, ONNX, Triton
repository), the exports with their verification, download and delete, and the
merged models."""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd
import streamlit as st

from core import charts
from core.export import registry as exports
from core.export.merge import MergeAdapterSpec
from core.export.onnx import SUPPORTED, ExportOnnxSpec
from core.export.triton_repo import ExportTritonSpec
from core.format import human_bytes, inert_markdown
from core.models import registry as models
from core.spec import Spec, SpecError
from ui import access, forms

FORMATS = {
    "onnx": "ONNX (with KV cache)",
    "triton": "Triton model repository",
    "merge": "Merged model (adapter + base)",
}
VERIFIED_COLUMNS = {
    "ok": "within tolerance",
    "max_abs_logit_diff": "max |logit diff|",
    "prefill_max_abs": "prefill",
    "padded_max_abs": "padded batch",
    "decode_max_abs": "decode step",
    "greedy_match": "greedy equal",
    "argmax_agreement": "argmax agreement",
    "torch_tokens_per_s": "PyTorch tok/s",
    "onnx_tokens_per_s": "ONNX tok/s",
    "bytes": "size",
}


FORM = "exf_"
"""The form's widget keys start with this: the page keeps their values while the Exports tab is open."""


def spec_form() -> Optional[Spec]:
    """The new-export form; returns a valid spec or None (what is missing shown)."""
    kind = st.radio("Export as", list(FORMATS), format_func=FORMATS.get, horizontal=True, key="exf_kind")
    available = [m for m in models.list_models() if m.status == "available" and not models.is_reward_model(m)]
    if kind == "merge":
        available = [m for m in available if m.source == "adapter"]
        if not available:
            st.info("No adapter yet: train one with LoRA or QLoRA on the Training page; merging folds it into its base.")
            return None
    elif not available:
        st.info("Exporting needs a model: create, import or train one first (Models page).")
        return None
    c = st.columns(2)
    model = c[0].selectbox("Model or adapter" if kind != "merge" else "Adapter", [m.name for m in available], key="exf_model",
                           help=ExportOnnxSpec.doc("model") + (f" Families the ONNX export supports: {', '.join(SUPPORTED)}." if kind != "merge" else ""))
    suggested = f"{model}-{'merged' if kind == 'merge' else kind}"
    name = c[1].text_input("Name", key=f"exf_name_{kind}", placeholder=suggested,
                           help="Name of the export (empty: the one shown)") or suggested
    try:
        if kind == "merge":
            st.caption("A full model folder (safetensors, tokenizer, chat template, generation config, model card) that loads "
                       "with plain transformers; it joins your models and exports from there to ONNX or Triton.")
            return MergeAdapterSpec(model=model, output_name=name)
        c = st.columns(4)
        common: dict[str, Any] = dict(
            model=model,
            output_name=name,
            opset=forms.field(ExportOnnxSpec, "opset", "ONNX opset (empty: newest)", key="exf_opset", where=c[2]),
            verify_steps=forms.field(ExportOnnxSpec, "verify_steps", "Greedy steps verified", key="exf_verify_steps", where=c[3]),
        )
        if kind == "onnx":
            return ExportOnnxSpec(
                **common,
                int8=forms.field(ExportOnnxSpec, "int8", "Also int8", key="exf_int8", where=c[0]),
                int4=forms.field(ExportOnnxSpec, "int4", "Also 4-bit", key="exf_int4", where=c[1]),
            )
        graph = c[0].radio("Graph served", ["fp32", "int8", "int4"], horizontal=True, key="exf_served",
                           help="fp32 computes what the model does; int8 and 4-bit are smaller, verified by how often they agree")
        c2 = st.columns(4)
        return ExportTritonSpec(
            **common,
            int8=graph == "int8",
            int4=graph == "int4",
            instance=forms.field(ExportTritonSpec, "instance", "Decoder runs on", key="exf_instance", where=c[1], horizontal=True),
            max_tokens=forms.field(ExportTritonSpec, "max_tokens", "Default max new tokens", key="exf_max_tokens", where=c2[0]),
        )
    except SpecError as exc:
        st.error(str(exc))
        return None


def show_export(job_id: int) -> None:
    """After Start: open the Exports tab on the export this job makes (a merge
    makes a model: it shows under Merged models when done)."""
    try:
        st.session_state["follow_export"] = exports.for_job(job_id).id
    except exports.ExportError:
        st.session_state["follow_export"] = None


def follow() -> None:
    """At the top of the page, before the tabs exist: follow an export just started."""
    if "follow_export" in st.session_state:
        export_id = st.session_state.pop("follow_export")
        st.session_state["export_tab"] = "Exports"
        if export_id is not None:
            st.session_state["export_pick"] = export_id


# --- the exports --------------------------------------------------------------------------


def verified_line(checks: dict[str, dict[str, Any]]) -> str:
    """'fp32 ok · int8 OUTSIDE TOLERANCE' (never hidden), '-' before verification."""
    return " · ".join(f"{p} {'ok' if c.get('ok') else 'OUTSIDE TOLERANCE'}" for p, c in checks.items()) or "-"


def exports_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([
        {
            "id": r["id"],
            "name": r["name"],
            "owner": r["owner"] or "",
            "format": r["format"],
            "status": r["status"],
            "model": r["model"] or "-",
            "size": human_bytes(r["size_bytes"]) if r["size_bytes"] else "-",
            "verified": verified_line(r["verification"]),
            "created": (r["created_at"] or "")[:16].replace("T", " "),
        }
        for r in rows
    ])


def verification_frame(checks: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per graph: every number, the verdict in words."""
    rows = []
    for precision, check in checks.items():
        row: dict[str, Any] = {"graph": precision}
        for key, label in VERIFIED_COLUMNS.items():
            value = check.get(key)
            if key == "ok":
                value = "yes" if value else "OUTSIDE TOLERANCE"
            elif key == "greedy_match":
                parted = check.get("greedy_first_mismatch")
                value = f"yes ({check.get('steps')} steps)" if value else \
                    (f"no: parts at step {parted} of {check.get('steps')}" if parted is not None else f"no ({check.get('steps')} steps)")
            elif key == "argmax_agreement" and value is not None:
                value = f"{value:.1%}"
            elif key == "bytes":
                value = human_bytes(value) if value else "-"
            elif isinstance(value, float):
                value = f"{value:.3g}"
            row[label] = value
        row["tolerance"] = check.get("tolerance", "")
        rows.append(row)
    return pd.DataFrame(rows)


def exports_panel() -> None:
    rows = [exports.export_dict(r) for r in exports.list_exports()]
    if not rows:
        st.info("No exports yet: start one in the New export tab.")
    else:
        st.dataframe(exports_frame(rows), hide_index=True, width="stretch", key="export_table")
        by_id = {r["id"]: r for r in rows}
        if st.session_state.get("export_pick") not in by_id:
            st.session_state["export_pick"] = rows[-1]["id"]
        chosen = st.selectbox("Export", list(by_id), format_func=lambda i: f"#{i} {by_id[i]['name']} ({by_id[i]['format']})",
                              key="export_pick")
        details(by_id[chosen])
    merged_models_panel()


def details(r: dict[str, Any]) -> None:
    """One export: verdict, numbers, chart, lineage, files, download, delete."""
    facts, checks = r["details"], r["verification"]
    if r["status"] != "available":
        st.info(f"Export '{r['name']}' is {r['status']} (job {r['job_id']}): its numbers appear when it is done.")
        return
    outside = [p for p, c in checks.items() if not c.get("ok")]
    if outside:
        st.warning(
            "Outside tolerance: " + "; ".join(
                f"**{p}** (argmax agreement {checks[p]['argmax_agreement']:.1%}, max |logit diff| {checks[p]['max_abs_logit_diff']:.3g}; "
                f"wanted {checks[p].get('tolerance', '?')})" for p in outside
            ) + ". The graph is kept so you can judge; it does not compute what the model does to within the tolerance.",
            icon=":material/warning:",
        )
    else:
        st.success(f"Every graph verified within its tolerance against PyTorch ({', '.join(checks)}).", icon=":material/verified:")
    st.dataframe(verification_frame(checks), hide_index=True, width="stretch", key=f"export_checks_{r['id']}")
    st.plotly_chart(charts.export_figure(checks), key=f"export_chart_{r['id']}", config={"displayModeBar": False})
    lines = [f"**Lineage** {' → '.join(facts.get('lineage', []))}",
             f"**Opset** {facts.get('opset', '-')} · **cache** {facts.get('layers')} layers × {facts.get('kv_heads')} KV heads × {facts.get('head_dim')}",
             f"**Folder** `{r['path']}`"]
    if r["format"] == "triton":
        loop = facts.get("decode_loop", {})
        lines.insert(1, f"**Triton** models `{'`, `'.join(facts.get('models', []))}` · serves the **{facts.get('served')}** graph on the "
                        f"{str(facts.get('instance', '')).upper()} · the text model's decode loop gave the graph's greedy tokens "
                        f"({loop.get('tokens', 0)} tokens) · container `{facts.get('container')}`")
    st.markdown("  \n".join(lines))
    readme = exports.export_dir(r["id"]) / "README.md"
    if readme.exists():
        with st.expander("README (in the folder)"):
            st.markdown(inert_markdown(readme.read_text()))
    left, right = st.columns(2)
    left.download_button(
        f"Download {r['name']}.tar ({human_bytes(r['size_bytes'])})", data=lambda: _archive(r["id"]), file_name=f"{r['name']}.tar",
        mime="application/x-tar", key=f"export_download_{r['id']}", icon=":material/download:",
    )
    with right:
        sure = st.checkbox(f"Delete '{r['name']}' and its files", key=f"export_delete_sure_{r['id']}")
        if not access.may_change(r.get("owner_id")):
            st.caption(f"This export belongs to {r.get('owner') or 'nobody yet'}: only its owner or an admin may delete it.")
        elif st.button("Delete export", key=f"export_delete_{r['id']}", disabled=not sure):
            try:
                exports.delete(r["id"], by=access.actor())
                st.toast(f"Deleted export '{r['name']}'")
                st.rerun()
            except exports.ExportError as exc:
                st.error(str(exc))


def _archive(export_id: int) -> bytes:
    """The .tar of an export, built when the button is clicked (in memory: an
    export of several GB wants `python -m core export show` and its folder)."""
    row = exports.get_or_none(export_id)
    if row is None:
        raise exports.ExportError(f"export {export_id} was deleted")
    return exports.archive(row)


def merged_models_panel() -> None:
    merged = [m for m in models.list_models() if (m.details or {}).get("merged_from")]
    st.subheader("Merged models")
    if not merged:
        st.caption("None yet: merge an adapter into its base in the New export tab. A merged model is a model: it is also on the Models page.")
        return
    st.dataframe(pd.DataFrame([
        {
            "name": m.name,
            "adapter": m.details["merged_from"].get("adapter"),
            "base": m.details["merged_from"].get("base"),
            "max |logit diff| vs adapter": f"{m.details['merged_from'].get('max_abs_logit_diff', float('nan')):.2g}",
            "size": human_bytes(m.size_bytes),
            "folder": m.path,
        }
        for m in merged
    ]), hide_index=True, width="stretch", key="export_merged")
