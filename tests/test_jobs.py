"""The job lifecycle for real: worker subprocesses on a tiny model, both backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest
from sqlalchemy import select

from conftest import ROOT, skewed, wait_for
from core.jobs import lifecycle as jobs
from core.jobs.liveness import worker_alive
from core.models import registry as models
from core.models.create import CreateModelSpec
from core.models.importer import ImportModelSpec
from core.models.starter import AddStarterSpec
from storage.db import session
from storage.tables import Event, Job, Metric, Model


def _running_with_pid(job_id: int, message_not: str = "starting worker"):
    job = jobs.get(job_id)
    return job if job.status == "running" and job.pid and job.progress_message not in (message_not, "loading") else None


def test_success_writes_model_metrics_and_events(home, backend):
    job_id = jobs.submit(CreateModelSpec(name="tiny-ok", arch="gpt2", size="tiny"))
    job = jobs.wait(job_id, timeout_s=120)
    assert job.status == "succeeded", job.log_tail
    assert job.progress_step == job.progress_total == 4
    assert job.result == {"model_id": job.model_ids[0]}
    row = models.get(job.model_ids[0])
    assert row.status == "available" and row.source == "scratch" and row.job_id == job_id
    folder = home / row.path
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not models.partial_dir(row.id).exists()
    assert row.num_parameters > 100_000 and row.context_length == 256 and row.has_chat_template
    assert json.loads((home / "runs" / str(job_id) / "spec.json").read_text())["name"] == "tiny-ok"
    assert "succeeded" in (home / "runs" / str(job_id) / "log.txt").read_text()
    with session() as s:
        assert s.scalars(select(Metric.value).where(Metric.job_id == job_id, Metric.name == "num_parameters")).one() == row.num_parameters
        messages = [e.message for e in s.scalars(select(Event).order_by(Event.id))]
    assert any("Queued job" in m for m in messages) and any("succeeded" in m for m in messages)


def test_runtime_bad_input_fails_with_clear_error(home, backend, tmp_path):
    folder = tmp_path / "strange"
    folder.mkdir()
    # valid JSON that names an architecture transformers does not know: found only by loading it
    (folder / "config.json").write_text('{"model_type": "no-such-architecture", "n_layer": 2}')
    job_id = jobs.submit(ImportModelSpec(source=str(folder), name="strange"))
    job = jobs.wait(job_id, timeout_s=120)
    assert job.status == "failed"
    assert job.error_class == "bad_input"
    assert "not a model transformers can read" in job.error
    assert job.log_tail  # the traceback stays in the log, the message in the row
    row = models.get(job.model_ids[0])
    assert row.status == "error" and "not a model transformers can read" in row.error
    assert not models.partial_dir(row.id).exists() and not models.model_dir(row.id).exists()
    # fixed input, same name: the failed attempt gives its name up
    (folder / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    retry = jobs.submit(ImportModelSpec(source=str(folder), name="strange"))
    assert [m.id for m in models.list_models()] == [jobs.get(retry).model_ids[0]]
    jobs.cancel(retry)


@pytest.mark.fast
def test_a_broken_input_file_is_refused_before_a_job_starts(home, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{\n  "model_type": "gpt2",\n  "n_layer": 2,,\n}\n')
    with pytest.raises(ValueError, match=r"source: .*config.json: invalid JSON at line 3"):
        jobs.submit(ImportModelSpec(source=str(folder), name="broken"))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="source: .*fake.gguf: not a GGUF file"):
        jobs.submit(ImportModelSpec(source=str(fake), name="fake"))
    with session() as s:
        assert s.scalars(select(Job)).all() == [] and s.scalars(select(Model)).all() == []
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_liveness_live_exited_zombie_and_reused_pid():
    """Through psutil: a live worker, one that exited, a zombie, and a PID now
    held by another process (or by the worker of another job)."""
    assert worker_alive(None, 7) is False
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "core.worker", "7"])
    try:
        wait_for(lambda: worker_alive(live.pid, 7) is True, 30, what="the process to be identified")
        assert worker_alive(live.pid, 8) is False  # another job's worker
    finally:
        live.kill()
        live.wait()
    assert worker_alive(live.pid, 7) is False  # exited and reaped

    zombie = subprocess.Popen([sys.executable, "-c", "pass", "core.worker", "7"])
    try:
        wait_for(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE, 30, what="a zombie")
        assert worker_alive(zombie.pid, 7) is False  # exited, not yet reaped: gone all the same
    finally:
        zombie.wait()

    other = subprocess.Popen(["sleep", "60"])  # the PID of a dead worker, reused by something else
    try:
        wait_for(lambda: psutil.Process(other.pid).cmdline() == ["sleep", "60"], 30, what="sleep to start")
        assert worker_alive(other.pid, 7) is False
    finally:
        other.kill()
        other.wait()


def test_cancel_mid_run_is_graceful(home, backend, monkeypatch):
    monkeypatch.setenv("LLMDEV_CANCEL_GRACE_S", "60")
    job_id = jobs.submit(CreateModelSpec(name="to-cancel", arch="gpt2", size="small"))
    model_id = jobs.get(job_id).model_ids[0]
    job = wait_for(lambda: _running_with_pid(job_id), 90, what="the worker to report a step")
    assert jobs.cancel(job_id) == "stopping"
    job = jobs.wait(job_id, timeout_s=90)
    assert job.status == "cancelled"
    assert "stopped cleanly" in jobs.read_log_tail(job_id)
    wait_for(lambda: worker_alive(job.pid, job_id) is False, 10, what="the worker to exit")
    # a cancelled creation leaves no model behind, and no files
    assert model_id not in [m.id for m in models.list_models()]
    assert not models.partial_dir(model_id).exists() and not models.model_dir(model_id).exists()


def test_second_cancel_kills(home, backend, monkeypatch):
    monkeypatch.setenv("LLMDEV_CANCEL_GRACE_S", "600")
    job_id = jobs.submit(CreateModelSpec(name="to-kill", arch="llama", size="small"))
    job = wait_for(lambda: _running_with_pid(job_id), 90, what="the worker to start")
    assert jobs.cancel(job_id) == "stopping"
    # a second cancel right away does not wait for the graceful stop
    assert jobs.cancel(job_id) in ("killed", "already cancelled")
    assert jobs.get(job_id).status == "cancelled"
    wait_for(lambda: worker_alive(job.pid, job_id) is False, 10, what="the worker to die")


def test_sigkilled_worker_is_marked_lost(home, backend):
    job_id = jobs.submit(CreateModelSpec(name="to-lose", arch="gpt2", size="small"))
    job = wait_for(lambda: _running_with_pid(job_id), 90, what="the worker to start")
    os.killpg(job.pid, signal.SIGKILL)
    wait_for(lambda: worker_alive(job.pid, job_id) is False, 10, what="the worker to die")
    jobs.refresh()  # anyone looking notices
    job = jobs.get(job_id)
    assert job.status == "failed" and job.error_class == "lost"
    assert "worker process is gone" in job.error
    assert models.get(job.model_ids[0]).status == "error"


def test_queue_drains_one_at_a_time_without_a_daemon(home, backend, monkeypatch):
    monkeypatch.setenv("LLMDEV_MAX_CONCURRENT_JOBS", "1")
    ids = [jobs.submit(CreateModelSpec(name=f"q{i}", size="tiny", arch="gpt2")) for i in range(3)]
    assert [jobs.get(i).status for i in ids] == ["running", "queued", "queued"]

    def all_done():
        # read only: no refresh(), so nobody but the workers starts jobs
        with session() as s:
            return all(s.get(Job, i).status in jobs.TERMINAL for i in ids)

    wait_for(all_done, 180, interval=0.1, what="the queue to drain")
    done = [jobs.get(i) for i in ids]
    assert [j.status for j in done] == ["succeeded"] * 3
    # one at a time, from the recorded times (not a sample of the statuses)
    assert done[0].finished_at <= done[1].started_at and done[1].finished_at <= done[2].started_at


def test_job_started_by_one_process_is_cancelled_by_another(home, backend, cli, monkeypatch):
    """What a Streamlit restart looks like: the starter of the job is gone."""
    monkeypatch.setenv("LLMDEV_CANCEL_GRACE_S", "60")
    out = cli("models", "create", "--arch", "gpt2", "--size", "small", "--name", "other-proc")
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout.strip().splitlines()[-1])
    wait_for(lambda: _running_with_pid(job_id), 90, what="the worker to start")
    assert jobs.cancel(job_id) == "stopping"
    assert jobs.wait(job_id, timeout_s=90).status == "cancelled"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # SQLite: one machine, one clock
def test_a_worker_on_another_host_whose_clock_is_behind_is_not_lost(home, backend, tmp_path):
    """A worker on another machine (its own host name, a UTS namespace) whose clock
    is 3 minutes behind: it writes its heartbeat with the database's clock, so the
    app, which can only judge it by its heartbeat, does not take it for dead."""
    if subprocess.run(["unshare", "--uts", "true"]).returncode != 0:
        pytest.skip("this machine cannot make a UTS namespace (unshare --uts), which stands in for another host")
    job_id = jobs.submit(CreateModelSpec(name="elsewhere", arch="llama", size="small"), start=False)
    command = " ".join([*skewed("-3m"), sys.executable, "-m", "core.worker", str(job_id)])
    output = tmp_path / "node-b.log"
    with output.open("w") as out:
        worker = subprocess.Popen(["unshare", "--uts", "sh", "-c", f"hostname node-b && exec {command}"], cwd=ROOT,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=out, stderr=subprocess.STDOUT)
    job = wait_for(lambda: _running_with_pid(job_id), 90, what="the worker on node-b to report a step")
    assert job.host == "node-b" and job.host != jobs.HOST
    # held still while the app looks (it cannot finish first), judged by its heartbeat alone
    held = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    for proc in held:
        proc.suspend()
    try:
        jobs.refresh()
        assert jobs.get(job_id).status == "running", jobs.get(job_id).error
    finally:
        for proc in held:
            proc.resume()
    assert worker.wait(timeout=180) == 0, output.read_text()
    job = jobs.wait(job_id, timeout_s=30)
    assert job.status == "succeeded", job.error
    # what it wrote (node-b's clock is 3 minutes behind: `skewed` checked) falls between its start and end
    with session() as s:
        ended = s.scalars(select(Event).where(Event.job_id == job_id, Event.message.contains("succeeded"))).one()
        measured = s.scalars(select(Metric).where(Metric.job_id == job_id)).all()
    assert measured and all(job.started_at <= m.created_at <= job.finished_at for m in measured)
    assert job.started_at <= ended.created_at


def test_cancel_queued_job_never_starts(home, backend, monkeypatch):
    monkeypatch.setenv("LLMDEV_MAX_CONCURRENT_JOBS", "1")
    first = jobs.submit(CreateModelSpec(name="first", size="tiny"))
    second = jobs.submit(CreateModelSpec(name="second", size="tiny"))
    assert jobs.cancel(second) == "cancelled (it had not started)"
    assert jobs.wait(first, timeout_s=120).status == "succeeded"
    job = jobs.get(second)
    assert job.status == "cancelled" and job.pid is None and job.started_at is None
    assert [m.name for m in models.list_models()] == ["first"]


def test_worker_runs_by_hand_on_a_queued_job(home, monkeypatch):
    job_id = jobs.submit(CreateModelSpec(name="by-hand", size="tiny"), start=False)
    assert jobs.get(job_id).status == "queued"
    done = subprocess.run(
        [sys.executable, "-m", "core.worker", str(job_id)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert jobs.get(job_id).status == "succeeded"
    assert models.find("by-hand").status == "available"


@pytest.mark.fast
def test_validation_failure_writes_nothing(home):
    with pytest.raises(ValueError, match="n_head: 3 heads do not divide hidden_size 64"):
        jobs.submit(CreateModelSpec(name="bad", size="tiny", n_head=3))
    jobs.submit(CreateModelSpec(name="taken", size="tiny"), start=False)
    with pytest.raises(ValueError, match="name: a model named 'TAKEN' already exists"):
        jobs.submit(CreateModelSpec(name="TAKEN", size="tiny"))
    with session() as s:
        assert len(s.scalars(select(Job)).all()) == 1
        assert len(s.scalars(select(Model)).all()) == 1
    assert sorted(p.name for p in (home / "runs").iterdir()) == ["1"]


def _job_process(supervisor_pid: int) -> int:
    """The pid of the job process the supervisor started (`core.worker ID --job-process`)."""
    children = wait_for(lambda: psutil.Process(supervisor_pid).children(), 10, what="the job process")
    return children[0].pid


def test_killed_job_process_is_recorded_and_the_queue_moves_on(home, backend, monkeypatch):
    """The out-of-memory killer picks the big process: the job process, not its
    supervisor. The supervisor says what happened and starts the next job, with
    nobody watching (this test only reads the database)."""
    monkeypatch.setenv("LLMDEV_MAX_CONCURRENT_JOBS", "1")
    victim = jobs.submit(CreateModelSpec(name="victim", arch="gpt2", size="small"))
    after = jobs.submit(CreateModelSpec(name="after", size="tiny"))
    job = wait_for(lambda: _running_with_pid(victim), 90, what="the worker to start")
    os.kill(_job_process(job.pid), signal.SIGKILL)

    def ended(job_id):
        with session() as s:
            return s.get(Job, job_id).status in jobs.TERMINAL

    wait_for(lambda: ended(victim) and ended(after), 120, what="both jobs to end")
    job = jobs.get(victim)
    assert job.status == "failed" and job.error_class == "lost"
    assert "killed by SIGKILL" in job.error and "out-of-memory" in job.error
    assert jobs.get(after).status == "succeeded"


def test_job_that_ignores_the_cancel_is_killed_after_the_grace_period(home, monkeypatch):
    """Dequantising the starter is one long call that cannot look at the stop
    flag: the supervisor kills it when the grace period is over."""
    monkeypatch.setenv("LLMDEV_CANCEL_GRACE_S", "1")
    job_id = jobs.submit(AddStarterSpec())
    wait_for(lambda: "reading the tokenizer" in jobs.get(job_id).progress_message, 90, what="the slow step")
    assert jobs.cancel(job_id) == "stopping"
    job = jobs.wait(job_id, timeout_s=60)
    assert job.status == "cancelled" and job.error == "cancelled (killed after the grace period)"
    assert "killing it" in jobs.read_log_tail(job_id)
    assert models.list_models() == []


def test_a_second_worker_for_a_running_job_refuses(home):
    job_id = jobs.submit(CreateModelSpec(name="once", size="small"))
    wait_for(lambda: _running_with_pid(job_id), 90, what="the worker to start")
    again = subprocess.run(
        [sys.executable, "-m", "core.worker", str(job_id)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1 and "not starting it" in again.stderr
    assert jobs.wait(job_id, timeout_s=120).status == "succeeded"


def test_a_light_job_runs_beside_a_training_run_and_a_heavy_one_says_why_it_waits(home, monkeypatch, tmp_path):
    from core.data.importer import ImportDatasetSpec
    from core.evaluation.perplexity import EvalPerplexitySpec
    from core.training.sft import SFTSpec

    monkeypatch.setenv("LLMDEV_MAX_CONCURRENT_JOBS", "1")
    assert jobs.wait(jobs.submit(CreateModelSpec(name="base", arch="llama", size="tiny")), timeout_s=120).status == "succeeded"
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(12)))
    assert jobs.wait(jobs.submit(ImportDatasetSpec(path=str(rows), name="rows")), timeout_s=120).status == "succeeded"

    train = jobs.submit(SFTSpec(model="base", dataset="rows", output_name="long", method="lora", max_steps=3000, save_steps=1000, eval_steps=0))
    wait_for(lambda: jobs.get(train).progress_step >= 1, 120, what="the training run to take steps")
    heavy = jobs.submit(EvalPerplexitySpec(model="base", dataset="rows", max_samples=0))
    assert jobs.lane(jobs.get(heavy)) == "heavy" and jobs.get(heavy).status == "queued"
    waiting = jobs.progress(jobs.get(heavy)).message
    assert waiting.startswith("queued: 1st in line, waiting for #%d SFT lora" % train), waiting
    assert "(1 heavy job at a time: LLMDEV_MAX_CONCURRENT_JOBS)" in waiting

    # an import is light: it starts at once in its own lane and ends while the training runs
    imported = jobs.submit(ImportDatasetSpec(path=str(rows), name="more"))
    assert jobs.lane(jobs.get(imported)) == "light"
    done = jobs.wait(imported, timeout_s=120)
    assert done.status == "succeeded", done.log_tail
    assert jobs.get(train).status == "running" and jobs.get(heavy).status == "queued"

    jobs.cancel(heavy)
    jobs.cancel(train)
    assert jobs.wait(train, timeout_s=120).status == "cancelled"


def test_lanes_of_the_kinds(home):
    from core.evaluation.perplexity import EvalPerplexitySpec

    assert CreateModelSpec(name="a", size="tiny").is_light() and CreateModelSpec(name="a", size="small").is_light()
    assert not CreateModelSpec(name="a", size="custom", n_layer=24, hidden_size=2048, n_head=16, context_length=2048, vocab_size=32000).is_light()
    assert AddStarterSpec().is_light()
    assert not ImportModelSpec(source="gpt2", name="a").is_light()  # a GGUF conversion or a download can be large
    assert jobs.wait(jobs.submit(CreateModelSpec(name="m", size="tiny")), timeout_s=120).status == "succeeded"
    assert EvalPerplexitySpec(model="m", dataset="d", max_samples=20).is_light()  # a few rows of a small model
    assert not EvalPerplexitySpec(model="m", dataset="d", max_samples=20, checkpoints=True).is_light()
    assert not EvalPerplexitySpec(model="m", dataset="d", max_samples=0).is_light()
    assert not EvalPerplexitySpec(model="nope", dataset="d", max_samples=20).is_light()  # unknown size: heavy
