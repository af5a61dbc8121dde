"""The serving part of the Export page through AppTest: the form and its command,
a refusal, a server started from the page, its snippets and a test request, the
judge form offering the served model, and stop."""

from __future__ import annotations

import json

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT, wait_for
from core.data.importer import ImportDatasetSpec
from core.jobs import lifecycle as jobs
from core.serving import service
from test_pages import no_exceptions
from ui import serving


@pytest.fixture
def page(home):
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/7_Export.py")
    at.session_state["export_tab"] = "Serve"
    yield at
    st.cache_resource.clear()


def test_serve_tab_without_models_says_what_is_needed(page):
    page.run()
    no_exceptions(page)
    assert any("Serving needs a model" in i.value for i in page.info)
    assert any("No Triton repository yet" in i.value for i in page.info)
    assert any("No server is running" in i.value for i in page.info)


def test_a_server_started_from_the_page_answers_its_test_request_and_stops(tiny_llama, page, tmp_path):
    page.run()
    no_exceptions(page)
    assert any(c.value.startswith("python -m core serve --model tiny") for c in page.code)
    # anything but loopback needs a key: refused in the form, nothing started
    page.text_input(key="srv_host").set_value("0.0.0.0").run()
    assert any("0.0.0.0" in e.value and "API key" in e.value for e in page.error)
    page.text_input(key="srv_host").set_value("127.0.0.1").run()
    page.number_input(key="srv_port").set_value(0).run()
    page.button(key="serve_start").click().run()
    no_exceptions(page)
    job_id = jobs.list_jobs()[0].id
    assert any(f"Started job {job_id}" in s.value for s in page.success)

    endpoint = wait_for(lambda: (jobs.get(job_id).result or {}).get("endpoint"), 120, what="the server to listen")
    wait_for(lambda: service.health(endpoint["url"])["status"] == "ok", 120, what="the model to load")
    page.run()
    no_exceptions(page)
    assert any("ready" in m.value and endpoint["api_base"] in m.value for m in page.markdown)
    snippets = [c.value for c in page.code]
    assert any(f"curl {endpoint['api_base']}/chat/completions" in c and '"model": "tiny"' in c for c in snippets)
    assert any(f'OpenAI(base_url="{endpoint["api_base"]}"' in c for c in snippets)

    page.text_area(key=f"srv_test_prompt_{job_id}").set_value("What do bees make?").run()
    page.number_input(key=f"srv_test_tokens_{job_id}").set_value(8).run()
    page.button(key=f"serve_test_send_{job_id}").click().run()
    no_exceptions(page)
    expected = service.send_test_request(endpoint, "tiny", "What do bees make?", 8)  # greedy: the same reply
    assert any(t.value == serving.shown_reply(expected["content"]) for t in page.text)
    assert any(f"+ {expected['usage']['completion_tokens']} new tokens" in c.value for c in page.caption)

    # the judge can ask the served model
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"prompt": q, "response": "Yes."}) + "\n" for q in ("Hi?", "Ok?", "Now?")))
    assert jobs.wait(jobs.submit(ImportDatasetSpec(path=str(facts), name="facts", validation_fraction=0)), timeout_s=120).status == "succeeded"
    page.switch_page("pages/5_Evaluation.py").run()
    page.radio(key="eval_kind").set_value("judge").run()
    page.radio(key="eval_judge_src").set_value("A model served here").run()
    no_exceptions(page)
    commands = [c.value for c in page.code if "eval judge" in c.value]
    assert commands and f"--judge-url {endpoint['api_base']}" in commands[0] and "--judge-endpoint-model tiny" in commands[0]

    page.switch_page("pages/7_Export.py")
    page.session_state["export_tab"] = "Serve"
    page.run()
    page.button(key=f"serve_stop_{job_id}").click().run()
    no_exceptions(page)
    assert jobs.wait(job_id, timeout_s=60).status == "stopped"
    page.run()
    assert any("No server is running" in i.value for i in page.info)
    assert any(f"#{job_id} stopped" in c.value for c in page.caption)
