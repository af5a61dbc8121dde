"""lm-evaluation-harness tasks with local data on a tiny registered model (and an adapter on it).

    OMP_NUM_THREADS=1 .venv/bin/pytest tests/test_lm_eval.py
"""

from __future__ import annotations

import json

import pytest

from core.evaluation import lm_eval
from core.inference import generate
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec

TASK = "llmdev_basics"  # 30 multiple-choice questions in assets/lm_eval_tasks/
GEN_TASK = "llmdev_arith_gen"  # 10 short generations


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, tokenizer) of a tiny registered model, made once for this file in its own
    data home (as the `home` fixture does per test): the runs below only read it."""
    from conftest import _stop_workers
    from storage import db

    data = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMDEV_HOME", str(data))
        mp.delenv("DATABASE_URL", raising=False)
        db.dispose_engines()
        try:
            job = jobs.wait(jobs.submit(CreateModelSpec(name="tiny", arch="llama", size="tiny", seed=3)), timeout_s=120)
            assert job.status == "succeeded"
            return generate.load(models.find("tiny"))
        finally:
            _stop_workers(data)
            db.dispose_engines()


@pytest.mark.fast
def test_local_tasks_are_listed_without_importing_lm_eval():
    import sys

    had = "lm_eval" in sys.modules
    assert {TASK, GEN_TASK} <= set(lm_eval.local_tasks())
    assert had or "lm_eval" not in sys.modules


def test_local_task_runs_on_the_tiny_model(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the task's data file is found from any directory
    model, tok = tiny
    calls = []
    result = lm_eval.run_tasks(model, tok, [TASK, GEN_TASK], batch_size=8, progress=lambda *a: calls.append(a))

    json.dumps(result, allow_nan=False)
    metrics = result["metrics"]
    assert 0 <= metrics[f"{TASK}/acc"] <= 1 and 0 <= metrics[f"{TASK}/acc_norm"] <= 1
    assert 0 <= metrics[f"{GEN_TASK}/exact_match"] <= 1
    assert f"{TASK}/acc" in result["stderr"] and result["higher_is_better"][f"{TASK}/acc"] is True
    assert result["n_samples"][TASK]["effective"] == 30 and result["versions"][TASK] == 1.0

    mc = [s for s in result["samples"] if s["task"] == TASK]
    gen = [s for s in result["samples"] if s["task"] == GEN_TASK]
    assert len(mc) == 30 and len(gen) == 10
    assert sorted(s["idx"] for s in mc) == list(range(30))
    first = next(s for s in mc if s["idx"] == 0)
    assert first["prompt"] == "Question: What is 2 + 3?\nAnswer:" and first["reference"] == "5"
    assert first["output"] in {"4", "5", "6", "7"} and set(first["scores"]) == {"acc", "acc_norm"}
    assert first["scores"]["acc"] == float(first["output"] == "5")
    assert sum(s["scores"]["acc"] for s in mc) / 30 == pytest.approx(metrics[f"{TASK}/acc"])
    assert all(s["prompt"] and s["reference"] and isinstance(s["output"], str) for s in gen)
    assert all(set(s["scores"]) == {"exact_match"} for s in gen)

    # 120 log-likelihood requests (30 questions x 4 choices), then 10 generations
    done = [c[0] for c in calls]
    assert done == sorted(done) and len(set(done)) == len(done) and len(calls) >= 3
    assert calls[-1][0] == calls[-1][1] == 130 and all(total > 0 for _, total, _ in calls)


def test_same_seed_same_result_and_limit(tiny):
    model, tok = tiny
    first = lm_eval.run_tasks(model, tok, [TASK], limit=7, seed=1)
    again = lm_eval.run_tasks(model, tok, [TASK], limit=7, seed=1)
    assert len(first["samples"]) == 7 and first["n_samples"][TASK]["effective"] == 7
    assert first["metrics"] == again["metrics"] and first["samples"] == again["samples"]
    assert first["config"]["limit"] == 7 and first["config"]["seed"] == 1


def test_cancel_stops_the_run_between_chunks(tiny):
    model, tok = tiny
    calls = []

    def cancel():
        if calls:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        lm_eval.run_tasks(model, tok, [TASK], batch_size=4, progress=lambda *a: calls.append(a), check_cancel=cancel)
    assert len(calls) == 1 and calls[0][0] < calls[0][1] == 120


def test_unknown_and_hub_tasks_are_refused_clearly(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=rf"unknown lm-eval task 'no_such_task'; local tasks: .*{TASK}"):
        lm_eval.run_tasks(model, tok, ["no_such_task"])
    # a built-in harness task reads its data from the Hub: offline, it cannot run here
    with pytest.raises(ValueError, match="the task data must be local"):
        lm_eval.run_tasks(model, tok, ["arc_easy"], limit=2)


def test_a_task_folder_of_ones_own(tiny, tmp_path, monkeypatch):
    folder = tmp_path / "my_tasks" / "yes_no"
    folder.mkdir(parents=True)
    rows = [{"q": f"Is {n} even?", "label": n % 2} for n in range(6)]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "yes_no.yaml").write_text(
        "task: my_yes_no\ndataset_path: json\ndataset_kwargs:\n  data_files: data.jsonl\ntest_split: train\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: ['yes', 'no']\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    assert "my_yes_no" in lm_eval.local_tasks([tmp_path / "my_tasks"])
    monkeypatch.chdir(tmp_path.parent)
    result = lm_eval.run_tasks(*tiny, ["my_yes_no"], include_paths=[tmp_path / "my_tasks"])
    assert len(result["samples"]) == 6 and result["samples"][1]["reference"] == "no"
    with pytest.raises(ValueError, match="is not a folder"):
        lm_eval.run_tasks(*tiny, ["my_yes_no"], include_paths=[tmp_path / "missing"])


def test_an_adapter_model_runs(tiny):
    import copy

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    base, tok = tiny
    torch.manual_seed(0)
    # get_peft_model changes the model it wraps: wrap a copy (the others share `tiny`)
    adapter = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    assert isinstance(adapter, PeftModel)
    result = lm_eval.run_tasks(adapter.eval(), tok, [TASK], limit=5)
    assert len(result["samples"]) == 5 and 0 <= result["metrics"][f"{TASK}/acc"] <= 1
