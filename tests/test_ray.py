"""Jobs on a Ray cluster (`runner: ray`): a real local Ray head (scripts/test.sh
starts it and sets LLMDEV_TEST_RAY_ADDRESS), the Ray Jobs API, the worker on the
node writing to the test PostgreSQL (SQLite where there is none)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from conftest import PG_URL, ROOT, skewed, wait_for
from core.data import registry as datasets
from core.data.importer import ImportDatasetSpec
from core.evaluation.perplexity import EvalPerplexitySpec
from core.export.triton_repo import ExportTritonSpec
from core.jobs import lifecycle as jobs
from core.jobs import ray_runner
from core.models import registry as models
from core.models.create import CreateModelSpec
from core.serving import triton_deploy
from core.serving.service import ServeSpec
from core.serving.triton_deploy import DeployTritonSpec
from core.spec import SpecError
from core.training.sft import SFTSpec
from test_serving import start_server
from test_triton_deploy import PROMPT, greedy

pytestmark = pytest.mark.ray

RAY = os.environ.get("LLMDEV_TEST_RAY_ADDRESS", "")
FACTS = [("What colour is the sky?", "Blue."), ("How many legs has a cat?", "Four."),
         ("What do bees make?", "Honey."), ("Which way is up?", "Away from the ground.")]


@pytest.fixture
def backend(request) -> str:
    """The test PostgreSQL, as a cluster's workers would reach it (SQLite when there is none)."""
    return "postgresql" if PG_URL else "sqlite"


@pytest.fixture
def cluster(home, backend, monkeypatch, tmp_path):
    """A data home with a tiny llama and a data set, whose jobs may go to the test Ray head."""
    if not RAY:
        if os.environ.get("CI"):
            pytest.fail("LLMDEV_TEST_RAY_ADDRESS is not set: run the suite with scripts/test.sh")
        pytest.skip("no Ray head (scripts/test.sh starts one)")
    monkeypatch.setenv(ray_runner.ADDRESS_ENV, RAY)
    assert jobs.wait(jobs.submit(CreateModelSpec(name="base", arch="llama", size="tiny")), timeout_s=120).status == "succeeded"
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in FACTS * 4))
    imported = jobs.wait(jobs.submit(ImportDatasetSpec(path=str(path), name="facts", validation_fraction=0.25)), timeout_s=120)
    assert imported.status == "succeeded", imported.log_tail
    yield home
    for job in jobs.list_jobs():
        if job.runner_id and ray_runner.status(job) not in ray_runner.ENDED:
            ray_runner.stop(job)


def sft(**overrides) -> SFTSpec:
    fields = dict(model="base", dataset="facts", output_name="tuned", method="lora", max_steps=6, batch_size=4,
                  save_steps=50, runner="ray")
    return SFTSpec(**{**fields, **overrides})


def running(job_id: int, step: int = 1) -> jobs.Job:
    """Wait until the job's worker has claimed it and made `step` steps."""
    def ready():
        job = jobs.get(job_id)
        assert job.status in jobs.ACTIVE, f"{job.status}: {job.error}\n{job.log_tail}"
        return job if job.pid and job.progress_step >= step else None

    return wait_for(ready, 180, what=f"job {job_id} to run")


def settled(job_id: int):
    """The job once it has ended, looking as the app does (refresh marks the lost)."""
    jobs.refresh()
    job = jobs.get(job_id)
    return job if job.status not in jobs.ACTIVE else None


def test_sft_on_ray_succeeds_with_metrics_a_registered_model_and_the_ray_log(cluster, cli):
    job = jobs.wait(jobs.submit(sft()), timeout_s=300)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    assert job.runner == "ray" and job.runner_id.startswith(f"llmdev-{job.id}-")
    client = ray_runner.client()
    wait_for(lambda: ray_runner.status(job) == "SUCCEEDED", 60, what="the Ray job to end")  # the worker exits after its last write
    info = client.get_job_info(job.runner_id)
    assert info.metadata["llmdev_job_id"] == str(job.id)
    # the database URL (a password, on PostgreSQL) reached the worker in a file it removed, not through Ray
    assert "DATABASE_URL" not in info.runtime_env["env_vars"] and info.runtime_env["env_vars"]["LLMDEV_RUNNER"] == "ray"
    assert info.runtime_env["env_vars"]["CUDA_VISIBLE_DEVICES"] == ""  # it asked for no GPU: it sees none
    assert not (jobs.run_dir(job.id) / ray_runner.WORKER_ENV).exists()
    assert len(jobs.metrics(job.id)["train_loss"]) == 6
    out = models.get(job.result["model_id"])
    assert out.parent_id == models.find("base").id and out.status == "available" and out.source == "adapter"
    assert out.details["dataset_fingerprint"] == datasets.find("facts").fingerprint
    assert f"job {job.id} succeeded" in client.get_job_logs(job.runner_id)
    assert f"job {job.id} succeeded" in jobs.read_log_tail(job.id)
    shown = cli("jobs", "show", str(job.id), "--json")
    assert shown.returncode == 0, shown.stderr
    assert {"runner": "ray", "runner_id": job.runner_id}.items() <= json.loads(shown.stdout).items()


def test_a_ray_job_is_cancelled_by_another_process_and_a_killed_worker_is_lost(cluster, cli):
    first = jobs.submit(sft(max_steps=400, output_name="long"))
    running(first)
    # while it runs, the Jobs page shows the log its node writes into the run folder (not asking Ray each time)
    from streamlit.testing.v1 import AppTest

    page = AppTest.from_file(str(ROOT / "pages" / "9_Jobs.py"), default_timeout=60)
    page.run()
    assert [e.value for e in page.exception] == []
    runner_id = jobs.get(first).runner_id
    assert any(c.value.endswith(f"(the Ray job {runner_id}'s log as its node writes it)") for c in page.caption)
    assert any(f"running job {first}" in c.value for c in page.code)
    out = cli("jobs", "cancel", str(first))  # another app process: through the database
    assert out.returncode == 0, out.stderr
    ended = jobs.wait(first, timeout_s=120)
    assert ended.status == "cancelled", ended.error
    wait_for(lambda: ray_runner.status(ended) in ray_runner.ENDED, 60, what="the Ray job to end")
    with pytest.raises(models.ModelError):
        models.find("long")  # its reserved name is released

    second = jobs.submit(sft(max_steps=400, output_name="killed"))
    job = running(second)
    group = os.getpgid(job.pid)  # the Ray job's entrypoint: its shell, the worker, the job process, tee
    assert group != os.getpgid(0)
    os.killpg(group, signal.SIGKILL)  # all of it dies on the node without a word
    lost = wait_for(lambda: settled(second), 120, what="the job to be marked lost")
    assert lost.status == "failed" and lost.error_class == "lost", lost.error
    assert "Ray job" in lost.error


def test_apps_whose_clocks_are_off_judge_a_ray_job_by_the_database_clock(cluster):
    """The worker's heartbeat and a cancel request are stamped with the database's
    clock: an app 3 minutes ahead does not take the live Ray job for dead (nor
    shows it running 3 minutes longer than it has), and a
    cancel asked from one 3 minutes behind is not "overdue" to the others (the
    worker stops the job cleanly, it is not killed)."""
    if not PG_URL:
        pytest.skip("with SQLite the cluster is this machine: one clock")
    job_id = jobs.submit(sft(max_steps=3000, output_name="skew"))  # cancelled long before its end
    running(job_id)

    def app(offset: str, *args: str) -> str:
        out = subprocess.run([*skewed(offset), sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert out.returncode == 0, out.stderr
        return out.stdout

    app("+3m", "jobs", "list")  # looks at the running jobs, marking the dead ones lost
    assert jobs.get(job_id).status == "running", jobs.get(job_id).error
    elapsed = json.loads(app("+3m", "jobs", "show", str(job_id), "--json"))["progress"]["elapsed_s"]
    # asked there first, then here: no longer there than here (its own clock would add 3 minutes)
    assert 0 < elapsed <= jobs.progress(jobs.get(job_id)).elapsed_s
    assert "stopping" in app("-3m", "jobs", "cancel", str(job_id))
    ended = jobs.wait(job_id, timeout_s=120)
    assert ended.status == "cancelled" and ended.error.startswith("cancelled at step"), ended.error  # not killed
    assert "stopped cleanly" in jobs.read_log_tail(job_id, 200)


def test_a_ray_job_asking_two_processes_trains_with_ddp_under_torchrun(cluster):
    """The multi-GPU path on a Ray node (torchrun, DDP), here with two CPU processes and gloo."""
    job = jobs.wait(jobs.submit(sft(processes=2, threads=2, output_name="ddp-cpu")), timeout_s=300)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    assert job.result["processes"] == 2
    assert "starting 2 training processes under torchrun" in ray_runner.logs(job)
    assert models.find("ddp-cpu").status == "available"


def test_an_evaluation_and_a_server_run_on_ray(cluster):
    job = jobs.wait(jobs.submit(EvalPerplexitySpec(model="base", dataset="facts", split="validation", runner="ray")),
                    timeout_s=300)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    assert job.runner == "ray" and job.result["metrics"]["perplexity"] > 1

    server, found = start_server(ServeSpec(models=["base"], port=0, runner="ray"))  # listening and healthy
    assert jobs.get(server).runner == "ray"
    assert httpx.get(found["url"] + "/health").json()["status"] == "ok"
    jobs.cancel(server)
    assert jobs.wait(server, timeout_s=60).status == "stopped"


def test_a_triton_deployment_runs_on_ray(cluster):
    why = triton_deploy.env_problem()
    if why:
        pytest.skip(f"the bundled Triton server cannot start here: {why}")
    made = jobs.wait(jobs.submit(ExportTritonSpec(model="base", output_name="base-triton", max_tokens=8,
                                                  verify_steps=2)), timeout_s=300)
    assert made.status == "succeeded", made.log_tail
    job_id = jobs.submit(DeployTritonSpec(export="base-triton", runner="ray"))

    def endpoint():
        job = jobs.get(job_id)
        assert job.status in jobs.ACTIVE, f"{job.status}: {job.error}\n{job.log_tail}"
        return (job.result or {}).get("endpoint")

    found = wait_for(endpoint, 240, what="Triton on the Ray node to be ready")
    job = jobs.get(job_id)
    assert job.runner == "ray" and job.runner_id and triton_deploy.ready(found["url"])
    assert triton_deploy.send_triton_request(found, PROMPT, 8)["text"] == greedy(models.find("base"), 8)
    jobs.cancel(job_id)
    assert jobs.wait(job_id, timeout_s=90).status == "stopped"
    wait_for(lambda: ray_runner.status(job) in ray_runner.ENDED, 60, what="the Ray job to end")
    assert not triton_deploy.ready(found["url"])


def test_what_a_cluster_cannot_run_is_refused_before_anything_is_written(cluster, monkeypatch):
    before = len(jobs.list_jobs())
    with pytest.raises(SpecError, match=r"gpus: .*asks for 1 GPU.*has 0"):
        jobs.submit(sft(gpus=1))
    with pytest.raises(SpecError, match=r"threads: .*asks for 64 CPUs.*has 2"):
        jobs.submit(sft(threads=64))
    # a cluster of other machines cannot reach this machine's SQLite
    far = ray_runner.Cluster(address=RAY, hosts=["node-a"], ips=["10.9.8.7"], cpus=8, gpus=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray_runner, "cluster", lambda where=None: far)
        mp.setattr(ray_runner, "database_url", lambda: "sqlite:////tmp/x.db")
        with pytest.raises(SpecError, match=r"runner: .*10\.9\.8\.7.*set DATABASE_URL to a PostgreSQL"):
            jobs.submit(sft())
    monkeypatch.setenv(ray_runner.ADDRESS_ENV, "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(SpecError, match=r"runner: the Ray cluster at http://127.0.0.1:9 does not answer"):
        jobs.submit(sft())
    monkeypatch.delenv(ray_runner.ADDRESS_ENV)
    with pytest.raises(SpecError, match=r"no Ray cluster is set: set LLMDEV_RAY_ADDRESS"):
        jobs.submit(sft())
    assert len(jobs.list_jobs()) == before


def test_a_data_home_the_nodes_cannot_see_is_refused(cluster, tmp_path):
    """The app runs in its own mount namespace, where the data home's path holds a
    private copy: what it writes there (the probe's token) no node can read."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("this machine cannot make a private mount namespace (unshare --mount), which stands in for a second machine")
    private = tmp_path / "private-home"
    shutil.copytree(cluster, private, symlinks=True)
    command = [sys.executable, "-m", "core", "train", "sft", "--model", "base", "--dataset", "facts",
               "--output-name", "unseen", "--max-steps", "2", "--runner", "ray"]
    script = f"mount --bind {private} {cluster} && cd {ROOT} && exec " + " ".join(command)
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=180, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode != 0
    assert f"does not see this data home ({cluster})" in out.stderr + out.stdout
    assert "shared filesystem" in out.stderr + out.stdout
    assert [j.id for j in jobs.list_jobs() if j.kind == "sft"] == []


def test_a_ray_job_that_never_starts_fails_with_the_reason(cluster, monkeypatch):
    monkeypatch.setenv("LLMDEV_MAX_CONCURRENT_JOBS", "2")
    hog = jobs.submit(sft(max_steps=5000, output_name="hog", threads=2))  # both of the head's CPUs
    running(hog)
    # one more CPU: Ray keeps it PENDING; a cancel ends it at once (Ray 2.60 keeps a pending job
    # that was asked to stop in its queue: if it ever starts, its worker finds it cancelled and exits)
    held = jobs.submit(sft(output_name="held"))
    wait_for(lambda: ray_runner.status(jobs.get(held)) == "PENDING", 60, what="the Ray job to be pending")
    assert jobs.cancel(held) == "cancelled (it had not started on the Ray cluster)"
    assert jobs.get(held).status == "cancelled"

    monkeypatch.setenv(ray_runner.START_TIMEOUT_ENV, "8")
    waiting = jobs.submit(sft(output_name="waits"))  # PENDING too, for longer than the wait
    failed = wait_for(lambda: settled(waiting), 90, what="the pending job to time out")
    assert failed.status == "failed" and "did not start it within 8 s" in failed.error, failed.error
    # a pause reaches the worker on the node through the database: it writes a checkpoint and ends paused
    jobs.cancel(hog, mode="pause")
    paused = jobs.wait(hog, timeout_s=120)
    assert paused.status == "paused" and paused.result.get("checkpoint"), (paused.status, paused.result, paused.error)


def test_the_sidebar_sends_a_form_s_job_to_ray_and_the_jobs_page_shows_it(cluster, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/1_Models.py").run()
    assert at.radio(key="runner").value == "local"  # this machine unless chosen
    at.radio(key="runner").set_value("ray").run()
    at.text_input(key="create_name").input("from-the-page")
    at.button[[b.label for b in at.button].index("Create model")].click().run()
    assert [e.value for e in at.exception] == []
    job = jobs.wait(max(j.id for j in jobs.list_jobs()), timeout_s=180)
    assert job.status == "succeeded" and job.runner == "ray" and job.spec["runner"] == "ray", job.error
    assert job.kind == "create_model" and models.find("from-the-page").status == "available"

    at.switch_page("pages/9_Jobs.py").run()
    assert [e.value for e in at.exception] == []
    assert f"Ray {job.runner_id}" in at.dataframe[0].value["runs on"].tolist()
    assert any(job.runner_id in c.value and "Ray dashboard" in c.value for c in at.caption)
    assert any(f"job {job.id} succeeded" in c.value for c in at.code)  # the log, read from Ray once it ended
    assert any(c.value.startswith(f"The Ray job's log ({job.runner_id})") for c in at.caption)
    assert any("python -m core models create --name from-the-page" in c.value and "--runner ray" in c.value
               for c in at.code)

    # without a cluster set, there is nothing to choose
    monkeypatch.delenv(ray_runner.ADDRESS_ENV)
    at.run()
    assert not [r for r in at.radio if r.key == "runner"]
    at.switch_page("pages/9_Jobs.py").run()
    assert any("Ray cluster: none set" in e.label for e in at.expander)
    st.cache_resource.clear()


def test_a_job_asking_two_gpus_trains_with_two_processes_on_one_node(cluster):
    """DDP under torchrun on one Ray node, one process per GPU the cluster gave."""
    found = ray_runner.cluster()
    if found.gpus < 2:
        pytest.skip(f"the test Ray cluster's largest node has {found.gpus:g} GPUs; DDP on Ray needs a node with 2")
    job = jobs.wait(jobs.submit(sft(gpus=2, output_name="ddp")), timeout_s=600)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    assert job.result["processes"] == 2 and "starting 2 training processes under torchrun" in jobs.read_log_tail(job.id, 200)
