"""The RLHF page through AppTest: the pipeline, a DPO run started from the form
and followed on the Runs tab with its charts, GRPO's reward controls and the
"try it on 3 rows" check, rollouts by step, and the score box."""

from __future__ import annotations

import json

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core.data.importer import ImportDatasetSpec
from core.jobs import lifecycle as jobs
from core.models.create import CreateModelSpec
from core.training.grpo import GRPOSpec
from core.training.reward import RewardSpec

PAGE = "pages/4_RLHF.py"


@pytest.fixture
def page(home, tmp_path, prepared):
    def build():
        assert jobs.wait(jobs.submit(CreateModelSpec(name="base", arch="llama", size="tiny")), timeout_s=120).status == "succeeded"
        prefs = tmp_path / "prefs.jsonl"
        prefs.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "Yes, gladly.", "rejected": "No."}) + "\n" for i in range(16)))
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Say {i}", "answer": str(i)}) + "\n" for i in range(16)))
        for path, name, fmt in ((prefs, "prefs", "preference"), (prompts, "prompts", "prompt")):
            job = jobs.wait(jobs.submit(ImportDatasetSpec(path=str(path), name=name, format=fmt)), timeout_s=120)
            assert job.status == "succeeded", job.log_tail

    prepared("rlhf-page-base-prefs-prompts", build)
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60)
    at.run()
    at.switch_page(PAGE).run()
    yield at
    st.cache_resource.clear()


def ok(at: AppTest) -> None:
    assert [e.value for e in at.exception] == []


def test_dpo_from_the_page_is_followed_with_its_charts(page):
    metrics = {m.label: m.value for m in page.metric}
    assert metrics["Preference data sets"] == "1" and metrics["Prompt data sets"] == "1" and metrics["Reward models"] == "0"
    page.radio(key="rl_kind").set_value("dpo").run()
    ok(page)
    assert any(c.value.startswith("kind: dpo") and "model: base" in c.value for c in page.code)  # the YAML follows the form
    page.number_input(key="rl_dpo_max_steps_quick").set_value(4).run()
    page.selectbox(key="rl_dpo_loss_type").set_value("ipo").run()
    page.button(key="rlhf_start").click().run()
    ok(page)
    started = jobs.list_jobs()[0]
    assert started.kind == "dpo" and started.spec["loss_type"] == "ipo" and started.spec["max_steps"] == 4
    assert page.session_state["rl_tab"] == "Runs" and page.selectbox(key="rl_pick").value == started.id
    job = jobs.wait(started.id, timeout_s=300)
    assert job.status == "succeeded", job.log_tail
    page.run()
    ok(page)
    assert json.loads(page.get("vega_lite_chart")[0].proto.spec)["title"] == "Loss"
    panels = json.loads(page.get("plotly_chart")[0].proto.spec)
    titles = [a["text"] for a in panels["layout"]["annotations"]]
    assert "Implicit rewards" in titles and "Margin (chosen - rejected)" in titles
    # before and after: the same prompts answered by the starting policy and the aligned one, scored
    assert any("Train a reward model to score" in c.value for c in page.caption)
    rm = jobs.wait(jobs.submit(RewardSpec(model="base", dataset="prefs", output_name="rm", method="full", max_steps=2)), timeout_s=300)
    assert rm.status == "succeeded", rm.log_tail
    page.run()
    page.number_input(key=f"rl_ba_n_{job.id}").set_value(3).run()
    page.button(key=f"rlhf_ba_{job.id}").click().run()
    ok(page)
    scoring = [j for j in jobs.list_jobs() if j.kind == "eval_reward"]
    assert len(scoring) == 2 and {j.spec["max_samples"] for j in scoring} == {3}
    for j in scoring:
        assert jobs.wait(j.id, timeout_s=300).status == "succeeded", jobs.get(j.id).log_tail
    page.run()
    ok(page)
    labels = [m.label for m in page.metric]
    assert "Before: base" in labels and any(label.startswith("After: ") for label in labels)
    table = page.dataframe[-1].value
    assert list(table.columns) == ["prompt", "before", "reward before", "after", "reward after"] and len(table) == 2
    # the form kept its values while the Runs tab was open
    page.session_state["rl_tab"] = "New run"
    page.run()
    assert page.number_input(key="rl_dpo_max_steps_quick").value == 4


def test_grpo_rewards_on_the_form_and_rollouts_by_step(page, tmp_path):
    page.radio(key="rl_kind").set_value("grpo").run()
    ok(page)
    assert any("choose at least one reward" in e.value for e in page.error)  # nothing chosen yet
    broken = tmp_path / "broken.py"
    broken.write_text("def reward(prompts, completions, **kw):\n    return [len(c) / 0 for c in completions]\n")
    page.text_input(key="rl_grpo_reward_file").input(str(broken)).run()
    page.button(key="rlhf_try_file").click().run()
    assert any("broken.py, line 2: ZeroDivisionError" in e.value for e in page.error)
    # "Try it" calls the file as a run does: the policy's own answers, in the run's types
    good = tmp_path / "good.py"
    good.write_text(
        "def reward(prompts, completions, completion_ids, trainer_state, answer=None, **kw):\n"
        "    def kind(x):\n"
        "        return 1.0 if isinstance(x, list) and x[-1]['role'] in ('user', 'assistant') else 2.0 if isinstance(x, str) else 0.0\n"
        "    ok = all(isinstance(i, int) for ids in completion_ids for i in ids) and trainer_state.global_step == 0\n"
        "    return [kind(c) + kind(p) * 10 + (100.0 if ok and a is not None else 0.0) for p, c, a in zip(prompts, completions, answer)]\n"
    )
    page.text_input(key="rl_grpo_reward_file").input(str(good)).run()
    page.button(key="rlhf_try_file").click().run()
    ok(page)
    from core.models import registry as models

    chat = bool(models.find("base").has_chat_template)  # conversational prompts and answers, else text
    assert page.dataframe and list(page.dataframe[0].value["score"]) == [111.0 if chat else 122.0] * 3
    assert list(page.dataframe[0].value.columns) == ["prompt", "answer", "score"]
    assert any("completion_ids" in c.value and "'answer' column" in c.value for c in page.caption)
    page.text_input(key="rl_grpo_contains").input("1, 2").run()
    yaml = next(c.value for c in page.code if c.value.startswith("kind: grpo"))
    assert "contains:\n- '1'\n- '2'" in yaml and "reward_file:" in yaml
    assert page.number_input(key="rl_grpo_weight_file").value == 1.0  # two rewards: a weight each

    # a run's rollouts, browsable by step
    job = jobs.wait(jobs.submit(GRPOSpec(model="base", dataset="prompts", output_name="g", contains=["a"], max_steps=2,
                                         batch_size=4, num_generations=4, max_completion_length=6)), timeout_s=300)
    assert job.status == "succeeded", job.log_tail
    page.session_state["rl_tab"] = "Runs"
    page.run()
    ok(page)
    assert [s.value for s in page.subheader] == ["Rollouts", "Before and after"]
    assert page.select_slider(key=f"rl_rollout_step_{job.id}").value == 2
    assert {"prompt", "answer", "contains", "total"} <= set(page.dataframe[0].value.columns)
    # before and after can be judged by the run's own rewards (no reward model needed)
    assert page.selectbox(key=f"rl_ba_rm_{job.id}").options == ["this run's own rewards"]


def test_the_score_box_rates_an_answer(page):
    job = jobs.wait(jobs.submit(RewardSpec(model="base", dataset="prefs", output_name="rm", method="full", max_steps=2)),
                    timeout_s=300)
    assert job.status == "succeeded", job.log_tail
    page.session_state["rl_tab"] = "Score an answer"
    page.run()
    ok(page)
    page.text_area(key="rl_score_prompt").input("q1").run()
    page.text_area(key="rl_score_response").input("Yes, gladly.").run()
    page.button(key="rlhf_score").click().run()
    ok(page)
    from core.inference import reward
    from core.models import registry as models

    model, tokenizer = reward.load(models.find("rm"))
    expected = reward.score(model, tokenizer, [("q1", "Yes, gladly.")])[0]
    assert float(next(m.value for m in page.metric if m.label == "Score")) == pytest.approx(expected, abs=1e-3)
