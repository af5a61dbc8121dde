"""Every page through streamlit.testing.v1.AppTest, against a real data home."""

from __future__ import annotations

import json

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec

PAGES = ["pages/1_Models.py", "pages/2_Datasets.py", "pages/3_Training.py", "pages/4_RLHF.py", "pages/5_Evaluation.py",
         "pages/6_Playground.py", "pages/7_Export.py", "pages/9_Jobs.py"]


@pytest.fixture
def app(home):
    st.cache_resource.clear()  # process-global: keyed by database URL, but be sure
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60)
    yield at
    st.cache_resource.clear()


def no_exceptions(at: AppTest) -> None:
    assert [e.value for e in at.exception] == []


@pytest.mark.fast
def test_dashboard_empty(app):
    app.run()
    no_exceptions(app)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Models"] == "0" and metrics["Jobs running"] == "0"
    assert any("No job is running" in c.value for c in app.caption)
    assert any("cores" in m.value for m in app.markdown)


@pytest.mark.fast
def test_every_page_is_listed():
    assert sorted(PAGES) == sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))


@pytest.mark.fast
@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(app, page):
    app.run()
    app.switch_page(page).run()
    no_exceptions(app)


def test_dashboard_after_a_job_shows_counts_activity_and_chart(app):
    job = jobs.wait(jobs.submit(CreateModelSpec(name="dash", size="tiny")), timeout_s=120)
    assert job.status == "succeeded"
    app.run()
    no_exceptions(app)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Models"] == "1" and metrics["Jobs succeeded"] == "1"
    assert any("Model 'dash' is ready" in m.value for m in app.markdown)
    spec = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert spec["data"][0]["y"] == ["succeeded"]


def test_models_page_creates_a_model_and_shows_its_details(app):
    app.run()
    app.switch_page("pages/1_Models.py").run()
    app.text_input(key="create_name").input("page-tiny")
    app.selectbox(key="create_arch").select("llama")
    app.button[[b.label for b in app.button].index("Create model")].click().run()
    no_exceptions(app)
    assert any("Started job" in s.value for s in app.success)
    job = jobs.wait(jobs.list_jobs()[0].id, timeout_s=120)
    assert job.status == "succeeded" and job.spec["arch"] == "llama"
    app.run()
    assert "page-tiny" in app.dataframe[0].value["name"].tolist()
    assert any("LlamaForCausalLM" in m.value for m in app.markdown)


@pytest.mark.fast
def test_models_page_shows_validation_errors_and_writes_nothing(app):
    app.run()
    app.switch_page("pages/1_Models.py").run()
    app.text_input(key="create_name").input("bad")
    app.number_input(key="dim_heads").set_value(3)
    app.button[[b.label for b in app.button].index("Create model")].click().run()
    assert any("n_head: 3 heads do not divide hidden_size 64" in e.value for e in app.error)
    assert jobs.list_jobs() == []


def test_models_page_rename_and_delete(app):
    row_id = jobs.wait(jobs.submit(CreateModelSpec(name="old-name", size="tiny")), timeout_s=120).result["model_id"]
    app.run()
    app.switch_page("pages/1_Models.py").run()
    app.text_input(key=f"rename_name_model_{row_id}").input("new-name")
    app.button[[b.label for b in app.button].index("Rename")].click().run()
    assert models.get(row_id).name == "new-name"
    app.checkbox(key=f"delete_sure_model_{row_id}").check().run()
    app.button(key=f"delete_model_{row_id}").click().run()
    no_exceptions(app)
    assert models.list_models() == []


def test_jobs_page_shows_command_and_log(app):
    job = jobs.wait(jobs.submit(CreateModelSpec(name="for-jobs", size="tiny")), timeout_s=120)
    app.run()
    app.switch_page("pages/9_Jobs.py").run()
    no_exceptions(app)
    codes = [c.value for c in app.code]
    assert "python -m core models create --name for-jobs" in codes
    assert any("worker pid" in c for c in codes)
    assert app.dataframe[0].value["status"].tolist() == [job.status]


def test_first_launch_converts_the_starter_once(app, monkeypatch):
    monkeypatch.setenv("LLMDEV_AUTO_STARTER", "1")
    app.run()
    no_exceptions(app)
    started = jobs.list_jobs()
    assert [j.kind for j in started] == ["add_starter"]
    assert models.list_models()[0].status == "creating"
    jobs.cancel(started[0].id)
    jobs.wait(started[0].id, timeout_s=120)
    # a later session (new tab, restart) with still no model does not start it again
    AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60).run()
    assert len(jobs.list_jobs()) == 1


def test_datasets_page_checks_previews_and_imports_a_sample(app):
    jobs.wait(jobs.submit(CreateModelSpec(name="tok", size="tiny")), timeout_s=120)
    app.run()
    app.switch_page("pages/2_Datasets.py").run()
    no_exceptions(app)
    assert any("No data sets yet" in i.value for i in app.info)
    # the Import tab: the first sample is checked and previewed as training sees it
    assert any("All 334 rows are valid (instruction)" in s.value for s in app.success)
    html = [h.proto.body for h in app.get("html")]
    assert any("&lt;|im_start|&gt;assistant" in h and "#1f3d2b" in h for h in html)
    app.button[[b.label for b in app.button].index("Import")].click().run()
    no_exceptions(app)
    assert any("Started job" in s.value for s in app.success)
    job = jobs.wait(jobs.list_jobs()[0].id, timeout_s=120)
    assert job.status == "succeeded", job.log_tail
    app.run()
    no_exceptions(app)
    assert app.dataframe[0].value["name"].tolist() == ["sample-instructions"]
    assert any(m.label == "Rows" and m.value == "334" for m in app.metric)
    assert app.get("plotly_chart")


def _datasets_page_on_a_bad_file(app, tmp_path) -> None:
    """The Datasets page, Import from a path, on a file whose line 2 is bad."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": ""}\n')
    app.run()
    app.switch_page("pages/2_Datasets.py").run()
    app.radio(key="data_source").set_value("Path on this machine").run()
    app.text_input(key="data_path").input(str(bad)).run()


@pytest.mark.fast
def test_datasets_page_reports_bad_rows_of_a_path(app, tmp_path):
    _datasets_page_on_a_bad_file(app, tmp_path)
    no_exceptions(app)
    assert any("1 bad row(s); 1 good." in e.value for e in app.error)
    problems = [d.value for d in app.dataframe if "problem" in d.value.columns]
    assert problems[0].to_dict("records") == [{"line": 2, "problem": "field 'text' is empty"}]


def test_training_page_starts_a_run_shows_its_yaml_and_charts(app, tmp_path, monkeypatch):
    import threading

    from core.jobs.run import Run

    from core.data.importer import ImportDatasetSpec

    jobs.wait(jobs.submit(CreateModelSpec(name="tiny", size="tiny")), timeout_s=120)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(20)))
    jobs.wait(jobs.submit(ImportDatasetSpec(path=str(path), name="d")), timeout_s=120)
    app.run()
    app.switch_page("pages/3_Training.py").run()
    no_exceptions(app)
    yaml_blocks = [c.value for c in app.code if c.value.startswith("kind: sft")]
    assert yaml_blocks and "model: tiny" in yaml_blocks[0] and "max_steps: 60" in yaml_blocks[0]
    app.number_input(key="sft_steps_quick").set_value(8).run()
    app.text_input(key="sft_output_tiny_lora_d").input("from-page").run()
    app.button(key="train_start").click().run()
    no_exceptions(app)
    started = jobs.list_jobs()[0].id
    assert any(f"Started job {started}" in s.value for s in app.success)
    # the page follows: the Runs tab, on the run just started
    assert app.session_state["train_tab"] == "Runs" and app.selectbox(key="train_pick").value == started
    job = jobs.wait(started, timeout_s=180)
    assert job.status == "succeeded" and job.spec["max_steps"] == 8, job.log_tail
    # the run panel builds its figure again only when a new metric point arrived
    from core import charts

    builds = []
    for name in ("training_figure", "live_chart"):  # the live loss chart and the other panels
        real = getattr(charts, name)
        monkeypatch.setattr(charts, name, lambda *a, _real=real, **kw: builds.append(1) or _real(*a, **kw))
    app.run()
    no_exceptions(app)
    # the job has ended: its banner and command block are gone, a toast said how it ended
    assert not any("Started job" in s.value for s in app.success)
    assert any(f"Job {started} succeeded" in t.value for t in app.toast)
    built = len(builds)
    assert built == 2  # the loss chart and the other panels
    app.run()
    assert len(builds) == built  # a second rerun, no new point: nothing built
    Run(started, threading.Event()).metrics(9, {"train_loss": 0.5})  # a point, written as a worker writes it
    app.run()
    assert len(builds) == 2 * built
    loss = app.get("vega_lite_chart")[0].proto
    assert json.loads(loss.spec)["title"] == "Loss"
    import pyarrow as pa

    raw = loss.data.data or loss.datasets[0].data.data
    points = pa.ipc.open_stream(raw).read_all().to_pandas()
    assert "train_loss" in set(points["metric"]) and 9 in points.loc[points["metric"] == "train_loss", "step"].tolist()  # the new point is drawn
    panels = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert any(trace["name"] == "grad_norm" for trace in panels["data"])
    assert any(b.label == "Merge the adapter into a full model" for b in app.button)
    # a name already taken: refused at the top of the page and in a toast, nothing written
    app.session_state["train_tab"] = "New run"
    app.run()
    assert not [m for m in app.metric if m.label == "Step"]  # the hidden Runs tab's live panel does not run
    assert app.number_input(key="sft_steps_quick").value == 8  # the form, not drawn while Runs was open, kept its values
    app.text_input(key="sft_output_tiny_lora_d").input("from-page").run()
    app.button(key="train_start").click().run()
    refused = [e.value for e in app.error if e.value.startswith("Not started")]
    assert refused and "output_name" in refused[0] and "from-page" in refused[0]
    assert any(t.value.startswith("Not started") for t in app.toast)
    assert len(jobs.list_jobs()) == 3


def test_a_queued_job_says_what_it_waits_for(app, monkeypatch):
    monkeypatch.setenv("LLMDEV_MAX_LIGHT_JOBS", "0")  # every job in one lane, one at a time
    first = jobs.submit(CreateModelSpec(name="one", size="tiny"), start=False)  # both held in the queue
    second = jobs.submit(CreateModelSpec(name="two", size="tiny"), start=False)
    assert jobs.progress(jobs.get(first)).message == "queued: starting"
    assert jobs.progress(jobs.get(second)).message == "queued: 2nd in line (1 heavy job at a time: LLMDEV_MAX_CONCURRENT_JOBS)"
    app.run()  # the page's refresh starts the first; the second waits for it, and says so
    texts = [p.proto.text for p in app.get("progress")]
    assert any(f"#{second}" in t and f"queued: 1st in line, waiting for #{first} Create" in t for t in texts), texts
    jobs.cancel(second)
    jobs.wait(first, timeout_s=120)


@pytest.mark.fast
def test_page_messages_name_the_pages_controls_not_cli_flags(app, tmp_path):
    _datasets_page_on_a_bad_file(app, tmp_path)
    app.button[[b.label for b in app.button].index("Import")].click().run()
    refused = [e.value for e in app.error if e.value.startswith("Not started")]
    assert refused and "--drop-bad-rows" not in refused[0]
    assert 'the "Drop the bad rows (otherwise the file is refused)" control' in refused[0]
    assert jobs.list_jobs() == []


def test_resume_on_the_training_page_shows_the_resumed_run(app, tmp_path):
    from conftest import wait_for
    from core.data.importer import ImportDatasetSpec
    from core.training.sft import SFTSpec

    jobs.wait(jobs.submit(CreateModelSpec(name="tiny", size="tiny")), timeout_s=120)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(20)))
    jobs.wait(jobs.submit(ImportDatasetSpec(path=str(path), name="d")), timeout_s=120)
    first = jobs.submit(SFTSpec(model="tiny", dataset="d", output_name="long", method="lora", max_steps=3000, save_steps=1000, eval_steps=0))
    wait_for(lambda: jobs.get(first).progress_step >= 2, 120, what="the run to take steps")
    assert jobs.cancel(first, mode="pause") == "stopping"
    paused = jobs.wait(first, timeout_s=120)
    assert paused.status == "paused", paused.log_tail
    app.session_state["train_tab"] = "Runs"
    app.run()
    app.switch_page("pages/3_Training.py").run()
    no_exceptions(app)
    assert {m.label: m.value for m in app.metric}["Status"] == "paused"
    app.button(key=f"resume_{first}").click().run()
    no_exceptions(app)
    resumed = jobs.list_jobs()[0]
    assert resumed.resumed_from == first
    assert app.selectbox(key="train_pick").value == resumed.id  # the page shows the new run, not the paused one
    jobs.cancel(resumed.id)
    jobs.wait(resumed.id, timeout_s=120)
