"""The Export page through AppTest: the forms of the three formats with their
terminal commands, an ONNX export started from the page and followed to its
verification (numbers, verdict per graph, chart, download), a refusal, delete."""

from __future__ import annotations

import json

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core.export import registry as exports
from core.jobs import lifecycle as jobs
from test_pages import no_exceptions


@pytest.fixture
def page(home):
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/7_Export.py")
    yield at
    st.cache_resource.clear()


def test_export_page_without_models_says_what_is_needed(page):
    page.run()
    no_exceptions(page)
    assert any("Exporting needs a model" in i.value for i in page.info)
    page.radio(key="exf_kind").set_value("merge").run()
    assert any("No adapter yet" in i.value for i in page.info)
    page.session_state["export_tab"] = "Exports"
    page.run()
    assert any("No exports yet" in i.value for i in page.info)
    assert any("Merged models" in h.value for h in page.subheader)


def test_export_page_exports_to_onnx_and_shows_the_verification(tiny_llama, page):
    page.run()
    no_exceptions(page)
    # the Triton form and its command line
    page.radio(key="exf_kind").set_value("triton").run()
    page.radio(key="exf_served").set_value("int4").run()
    commands = [c.value for c in page.code if "python -m core export" in c.value]
    assert commands and "export triton --model tiny --name tiny-triton --int4" in commands[0]
    # an ONNX export with int8, from the page
    page.radio(key="exf_kind").set_value("onnx").run()
    page.checkbox(key="exf_int8").check().run()
    page.number_input(key="exf_verify_steps").set_value(8).run()
    assert any("export onnx --model tiny --name tiny-onnx --int8 --verify-steps 8" in c.value for c in page.code)
    page.button(key="export_start").click().run()
    no_exceptions(page)
    job_id = jobs.list_jobs()[0].id
    assert any(f"Started job {job_id}" in s.value for s in page.success)
    # the page follows it on the Exports tab
    export_id = exports.find("tiny-onnx").id
    assert page.session_state["export_tab"] == "Exports" and page.selectbox(key="export_pick").value == export_id
    assert any("is creating" in i.value for i in page.info)
    job = jobs.wait(job_id, timeout_s=300)
    assert job.status == "succeeded", job.log_tail
    page.run()
    no_exceptions(page)
    row = exports.find("tiny-onnx")
    listed, numbers = (d.value for d in page.dataframe[:2])  # the exports, the chosen one's numbers
    assert listed["name"].tolist() == ["tiny-onnx"] and listed["status"].tolist() == ["available"]
    verdict = {p: "ok" if c["ok"] else "OUTSIDE TOLERANCE" for p, c in row.verification.items()}
    assert listed["verified"].tolist() == [f"fp32 {verdict['fp32']} · int8 {verdict['int8']}"]
    assert numbers["graph"].tolist() == ["fp32", "int8"] and numbers["within tolerance"].tolist()[0] == "yes"
    assert numbers["greedy equal"].tolist()[0] == "yes (8 steps)"
    assert numbers["argmax agreement"].tolist()[1] == f"{row.verification['int8']['argmax_agreement']:.1%}"
    if verdict["int8"] == "ok":
        assert any("Every graph verified" in s.value for s in page.success)
    else:  # never hidden
        assert any("Outside tolerance: **int8**" in w.value for w in page.warning)
    chart = json.loads(page.get("plotly_chart")[0].proto.spec)
    assert [t["x"] for t in chart["data"]][1] == ["PyTorch", "fp32", "int8"]
    assert [b for b in page.get("download_button") if b.proto.label.startswith("Download tiny-onnx.tar")]  # the browser test downloads it
    # a name already taken is refused at the top, nothing written
    page.session_state["export_tab"] = "New export"
    page.run()
    assert page.checkbox(key="exf_int8").value and page.number_input(key="exf_verify_steps").value == 8  # kept while hidden
    page.button(key="export_start").click().run()
    refused = [e.value for e in page.error if e.value.startswith("Not started")]
    assert refused and "an export named 'tiny-onnx' already exists" in refused[0]
    assert len(jobs.list_jobs()) == 2
    # delete, behind its confirmation box
    page.session_state["export_tab"] = "Exports"
    page.run()
    assert page.button(key=f"export_delete_{export_id}").disabled
    page.checkbox(key=f"export_delete_sure_{export_id}").check().run()
    page.button(key=f"export_delete_{export_id}").click().run()
    no_exceptions(page)
    assert exports.list_exports() == [] and any("No exports yet" in i.value for i in page.info)
