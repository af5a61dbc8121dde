"""torch's threads per job: chosen from the cores and what else runs, overridden
by the spec or a setting, recorded in the run's environment.json and in effect
in the job process."""

from __future__ import annotations

import json

import pytest

from core import config, threads
from core.jobs import lifecycle as jobs
from core.training.sft import SFTSpec
from test_training import tiny  # noqa: F401  (the fixture)


@pytest.mark.fast
@pytest.mark.parametrize(
    "cores, jobs_running, interactive, expected",
    [
        (1, 1, False, 1),
        (1, 1, True, 1),  # nothing to leave: one thread
        (2, 1, False, 2),  # alone on the machine: every core
        (2, 1, True, 1),  # the app or a browser wants CPU: one core left to it
        (2, 2, False, 1),
        (4, 1, True, 3),
        (4, 2, False, 2),
        (4, 3, True, 1),
        (8, 2, True, 3),
        (16, 1, True, 15),
        (16, 3, False, 5),
    ],
)
def test_thread_choice_for_core_counts_and_loads(cores, jobs_running, interactive, expected):
    n, why = threads.choose(cores, jobs=jobs_running, interactive=interactive)
    assert n == expected
    assert f"{cores} core" in why
    assert ("one left to the app" in why) == (interactive and cores > 1)
    assert ("shared by" in why) == (jobs_running > 1)


@pytest.mark.fast
def test_spec_and_setting_override_the_choice(monkeypatch):
    monkeypatch.delenv("LLMDEV_JOB_THREADS", raising=False)
    assert threads.for_job(0, 3).torch == 3 and threads.for_job(0, 3).reason == "set by the spec (threads)"
    monkeypatch.setenv("LLMDEV_JOB_THREADS", "2")
    chosen = threads.for_job(0, 0)
    assert (chosen.torch, chosen.reason) == (2, "set by LLMDEV_JOB_THREADS")
    assert threads.for_job(0, 1).torch == 1  # the spec wins over the setting
    monkeypatch.setenv("LLMDEV_JOB_THREADS", "many")
    with pytest.raises(ValueError, match="LLMDEV_JOB_THREADS='many': expected a whole number"):
        config.check()


@pytest.mark.fast
def test_light_jobs_take_one_thread(home, monkeypatch):
    monkeypatch.delenv("LLMDEV_JOB_THREADS", raising=False)
    chosen = threads.for_job(0, light=True)
    assert chosen.torch == 1 and "light job" in chosen.reason
    assert set(chosen.others) == {"app", "browser", "jobs"}


def test_the_choice_is_recorded_and_in_effect_in_the_job(tiny, monkeypatch):  # noqa: F811
    monkeypatch.delenv("LLMDEV_JOB_THREADS", raising=False)
    for asked in (0, 1):
        job = jobs.wait(jobs.submit(SFTSpec(model="base", dataset="facts", output_name=f"t{asked}", method="lora",
                                            max_steps=2, eval_steps=0, threads=asked)), timeout_s=180)
        assert job.status == "succeeded", job.log_tail
        env = json.loads((jobs.run_dir(job.id) / "environment.json").read_text())
        chosen = env["threads"]
        assert chosen["cores"] == threads.usable_cores() and chosen["reason"]
        # what torch ran with, not only what was asked (or where the Tuner had moved it by then)
        assert env["torch_threads_in_use"] in {chosen["torch"], *(c["to"] for c in chosen.get("changes", []))}
        if asked:
            assert chosen["torch"] == 1 and chosen["reason"] == "set by the spec (threads)"
        else:
            expected, _ = threads.choose(chosen["cores"], jobs=1)  # the Tuner measures the rest
            assert chosen["torch"] == expected
        assert f"torch threads: {chosen['torch']}" in (jobs.run_dir(job.id) / "log.txt").read_text()


def test_the_tuner_leaves_a_core_to_a_busy_neighbour_and_takes_it_back(monkeypatch):
    """A real busy process beside us: the tuner measures it and moves torch's threads."""
    import subprocess
    import sys
    import time

    if threads.usable_cores() < 2:
        pytest.skip("one core: there is nothing to leave to a neighbour")
    cores = threads.usable_cores()
    choice = threads.Choice(torch=cores, cores=cores, reason=f"{cores} cores")
    lines: list[str] = []
    applied: list[int] = []
    monkeypatch.setattr(threads, "apply", applied.append)  # this pytest process keeps its own threads
    tuner = threads.Tuner(choice, every_s=0.5, log=lines.append)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 20
        while tuner.current == cores and time.monotonic() < deadline:
            time.sleep(0.1)
            tuner.tick()
    finally:
        busy.kill()
        busy.wait()
    assert tuner.current < cores, lines  # at least the busy neighbour's core was left to it
    assert tuner.changes[0]["from"] == cores and tuner.changes[0]["others_load"] >= 0.5
    assert applied == [tuner.current]
    deadline = time.monotonic() + 20
    while tuner.current != cores and time.monotonic() < deadline:
        time.sleep(0.1)
        tuner.tick()
    assert tuner.current == cores, lines  # the neighbour is gone: every core again
    assert applied[-1] == cores and "torch threads:" in lines[0]


@pytest.mark.fast
def test_a_fixed_count_is_kept():
    for tuner in (threads.Tuner(threads.for_job(0, 1), every_s=0.0),  # set by the spec
                  threads.Tuner(threads.Choice(torch=1, cores=2, reason="2 cores"), every_s=0.0, processes=2)):  # a DDP rank
        tuner.tick()
        tuner.tick()
        assert tuner.current == 1 and tuner.changes == []
