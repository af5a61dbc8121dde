"""The Evaluation page through AppTest: start an evaluation, see the results
table and chart, the samples browser, the rubric editor, runs compared."""

from __future__ import annotations

import json

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core.evaluation import judge
from core.evaluation.generation import EvalGenerationSpec
from core.evaluation.perplexity import EvalPerplexitySpec
from core.jobs import lifecycle as jobs
from core.training.sft import SFTSpec
from test_eval import ok, setup  # noqa: F401  (the fixture)


@pytest.fixture
def page(setup):  # noqa: F811  (the fixture imported above)
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/5_Evaluation.py").run()
    yield at
    st.cache_resource.clear()


def no_exceptions(at: AppTest) -> None:
    assert [e.value for e in at.exception] == []


def test_start_an_evaluation_and_see_its_result_chart(page):
    no_exceptions(page)
    page.radio(key="eval_kind").set_value("generation").run()
    page.selectbox(key="eval_dataset_generation").set_value("facts").run()
    page.number_input(key="eval_max_new").set_value(4).run()
    no_exceptions(page)
    assert any("python -m core eval generation --model tiny --dataset facts" in c.value for c in page.code)
    page.button(key="eval_start").click().run()
    no_exceptions(page)
    submitted = page.session_state["last_submitted"]
    job = ok(submitted["job_id"])
    assert job.kind == "eval_generation" and job.spec["max_new_tokens"] == 4

    page.run()
    no_exceptions(page)
    table = page.dataframe[0].value  # the results table (the first tab has none)
    assert list(table["job"]) == [job.id] and "bleu" in table.columns
    chart = json.loads(page.get("plotly_chart")[0].proto.spec)
    assert chart["data"][0]["type"] == "bar" and chart["data"][0]["x"] == ["tiny"]
    assert chart["data"][0]["name"] == "facts"
    # the samples browser: best and worst by the first metric
    assert any("Best by bleu" in m.value for m in page.markdown)
    assert any("Reference:" in c.value for c in page.caption)


def test_invalid_input_is_explained_and_nothing_starts(page):
    page.radio(key="eval_kind").set_value("judge").run()
    page.radio(key="eval_judge_src").set_value("An OpenAI-compatible endpoint").run()
    page.text_input(key="eval_judge_url").set_value("not a url").run()
    no_exceptions(page)
    assert any("judge_url: 'not a url' is not an http(s) URL" in e.value for e in page.error)
    assert not any(b.key == "eval_start" for b in page.button)


def test_rubrics_are_edited_on_the_page(page):
    page.selectbox(key="rub_pick").set_value("(new rubric)").run()
    # form widgets: set the values, then submit (a run in between would drop them)
    page.text_input(key="rub_name_(new rubric)").set_value("short")
    page.text_area(key="rub_text_(new rubric)").set_value("Rate {answer}. Score: N")
    submit = [b for b in page.button if "Save rubric" in str(b.label)]
    submit[0].click().run()
    no_exceptions(page)
    assert "short" in [r.name for r in judge.rubrics()]
    page.text_input(key="rub_name_(new rubric)").set_value("broken")
    page.text_area(key="rub_text_(new rubric)").set_value("no placeholder")
    [b for b in page.button if "Save rubric" in str(b.label)][0].click().run()
    assert any("put {answer}" in e.value for e in page.error)


def test_checkpoints_over_steps_and_runs_compared(page):
    ok(jobs.submit(SFTSpec(model="tiny", dataset="facts", output_name="a", max_steps=4, batch_size=2, save_steps=2)), 300)
    ok(jobs.submit(SFTSpec(model="tiny", dataset="facts", output_name="b", max_steps=4, batch_size=2, save_steps=2,
                           learning_rate=1e-3)), 300)
    ok(jobs.submit(EvalPerplexitySpec(model="a", dataset="facts", split="all", checkpoints=True)))
    ok(jobs.submit(EvalGenerationSpec(model="a", dataset="facts", max_new_tokens=3)))
    ok(jobs.submit(EvalGenerationSpec(model="b", dataset="facts", max_new_tokens=3)))
    page.run()
    no_exceptions(page)
    charts = [json.loads(c.proto.spec) for c in page.get("plotly_chart")]
    steps = [c for c in charts if c["layout"].get("xaxis", {}).get("title", {}).get("text") == "training step"]
    assert steps and steps[0]["data"][0]["x"] == [2, 4]
    # two training runs overlaid, and the spec field that differs
    overlay = [c for c in charts if c["layout"].get("legend", {}).get("title", {}).get("text") == "run"]
    assert overlay and len(overlay[0]["data"]) == 2
    [diff] = [d.value for d in page.dataframe if "field" in d.value.columns]
    assert set(diff["field"]) == {"learning_rate", "output_name"}
    # two models' answers to the same prompts, side by side
    assert any(m.value.startswith("*a*") for m in page.markdown) and any(m.value.startswith("*b*") for m in page.markdown)
