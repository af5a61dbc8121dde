"""A Triton repository deployed to a real Triton Inference Server (the one
nvidia-pytriton bundles, in its own environment: `python -m core deploy
setup-triton`, which the test command runs), queried with HTTP generate_stream
and a tritonclient gRPC stream."""

from __future__ import annotations

import json
import queue
import signal

import httpx
import numpy as np
import psutil
import pytest
import torch

from streamlit.testing.v1 import AppTest

from conftest import ROOT, wait_for
from core.export.triton_repo import ExportTritonSpec
from core.inference.generate import eos_ids, load
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec
from core.serving import triton_deploy
from core.serving.triton_deploy import DeployTritonSpec
from core.spec import SpecError
from ui import serving

PROMPT = "The capital of France is"


@pytest.fixture
def exported(home):
    why = triton_deploy.env_problem()
    if why:
        pytest.skip(f"the bundled Triton server cannot start here: {why}")
    for spec in (CreateModelSpec(name="tiny", arch="llama", size="tiny", seed=3),
                 ExportTritonSpec(model="tiny", output_name="tiny-triton", max_tokens=12, verify_steps=4)):
        job = jobs.wait(jobs.submit(spec), timeout_s=300)
        assert job.status == "succeeded", job.log_tail
    return models.find("tiny")


def greedy(row, tokens: int) -> str:
    model, tokenizer = load(row)
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        made = model.generate(**ids, max_new_tokens=tokens, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    ends = set(eos_ids(model, tokenizer))
    made = made[: next((i for i, t in enumerate(made) if t in ends), len(made))]
    return tokenizer.decode(made, skip_special_tokens=True)


def deploy() -> tuple[int, dict]:
    job_id = jobs.submit(DeployTritonSpec(export="tiny-triton"))

    def endpoint():
        job = jobs.get(job_id)
        assert job.status in jobs.ACTIVE, f"{job.status}: {job.error}\n{job.log_tail}"
        return (job.result or {}).get("endpoint")

    return job_id, wait_for(endpoint, 180, what="Triton to be ready")


def grpc_stream(address: str, text: str, max_tokens: int) -> list[str]:
    import tritonclient.grpc as grpcclient

    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url=address)
    try:
        prompt = grpcclient.InferInput("text_input", [1], "BYTES")
        prompt.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
        limit = grpcclient.InferInput("max_tokens", [1], "INT32")
        limit.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("text_generation", [prompt, limit], request_id="1", enable_empty_final_response=True,
                                  outputs=[grpcclient.InferRequestedOutput("text_output")])
        pieces = []
        while True:
            result, error = answers.get(timeout=60)
            assert error is None, error
            if result.get_response().parameters["triton_final_response"].bool_param:
                return pieces
            pieces.append(result.as_numpy("text_output")[0].decode())
    finally:
        client.stop_stream()  # an open stream holds the server's shutdown
        client.close()


def test_a_deployed_repository_streams_pytorchs_greedy_text_and_a_killed_one_is_lost(exported):
    expected = greedy(exported, 12)
    job_id, endpoint = deploy()
    assert triton_deploy.ready(endpoint["url"])
    repo = triton_deploy.Path(endpoint["repository"])
    assert 'backend: "python"' in (repo / "decoder" / "config.pbtxt").read_text()  # the twin, same tensors

    with httpx.stream("POST", endpoint["generate_stream"], json={"text_input": PROMPT, "max_tokens": 12}, timeout=60) as r:
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    assert r.status_code == 200 and len(events) > 1  # streamed, piece by piece
    assert "".join(e["text_output"] for e in events) == expected
    assert "".join(grpc_stream(endpoint["grpc"], PROMPT, 12)) == expected
    assert triton_deploy.send_triton_request(endpoint, PROMPT, 12)["text"] == expected

    # the Export page's Serve tab shows it, sends its test request and stops it
    page = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60)
    page.run()
    page.switch_page("pages/7_Export.py")
    page.session_state["export_tab"] = "Serve"
    page.run()
    assert [e.value for e in page.exception] == []
    assert any(endpoint["url"] in m.value and endpoint["grpc"] in m.value for m in page.markdown)
    assert any(f"curl -N {endpoint['generate_stream']}" in c.value for c in page.code)
    page.text_input(key=f"srv_triton_prompt_{job_id}").set_value(PROMPT).run()
    page.number_input(key=f"srv_triton_tokens_{job_id}").set_value(12).run()
    page.button(key=f"serve_triton_send_{job_id}").click().run()
    assert any(t.value.strip() == serving.shown_reply(expected).strip() for t in page.text)  # (st.text trims)
    page.button(key=f"serve_stop_{job_id}").click().run()
    assert [e.value for e in page.exception] == []
    job = jobs.wait(job_id, timeout_s=60)
    assert job.status == "stopped" and job.result["endpoint"]["url"] == endpoint["url"]
    assert not triton_deploy.ready(endpoint["url"])

    # deployed again, and killed: lost, and its server dies with it (no orphan holds the ports)
    job_id, endpoint = deploy()
    supervisor = psutil.Process(jobs.get(job_id).pid)
    server = [p for p in supervisor.children(recursive=True) if "tritonserver" in p.name()]
    assert len(server) == 1
    for proc in [supervisor] + [p for p in supervisor.children(recursive=True) if p not in server]:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(server, timeout=30)
    assert not server[0].is_running()

    def ended():
        jobs.refresh()
        job = jobs.get(job_id)
        return job if job.status != "running" else None

    job = wait_for(ended, 60, what="the deployment to be marked lost")
    assert job.status == "failed" and job.error_class == "lost"


def test_what_cannot_be_deployed_is_refused_before_launch(home):
    with pytest.raises(SpecError) as remote:
        DeployTritonSpec(export="x", host="0.0.0.0")
    assert remote.value.field == "host" and "no authentication" in str(remote.value)
    with pytest.raises(SpecError) as missing:
        jobs.submit(DeployTritonSpec(export="nothing"))
    assert missing.value.field == "export" and "no export" in str(missing.value)
    assert jobs.list_jobs() == []
