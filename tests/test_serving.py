"""The OpenAI-compatible server (`python -m core serve`), talked to with the
official `openai` client and plain HTTP, on a tiny model served by a real job."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import torch

from conftest import ROOT, _stop_workers, wait_for
from core.data.importer import ImportDatasetSpec
from core.evaluation import judge
from core.evaluation.judge import EvalJudgeSpec
from core.export import registry as exports
from core.export.onnx import ExportOnnxSpec
from core.inference import generate
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec
from core.serving.service import ServeSpec
from core.spec import SpecError
from core.training.sft import SFTSpec
from storage import db

KEY = "test-key-123"
FACTS = [("What colour is the sky?", "Blue."), ("How many legs has a cat?", "Four."),
         ("What do bees make?", "Honey."), ("Which way is up?", "Away from the ground.")]


def ok(job_id: int, timeout: float = 240):
    job = jobs.wait(job_id, timeout_s=timeout)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    return job


def start_server(spec: ServeSpec) -> tuple[int, dict]:
    """Submit a serve job and wait until it listens and /health says ready."""
    job_id = jobs.submit(spec)

    def endpoint():
        job = jobs.get(job_id)
        assert job.status in jobs.ACTIVE, f"{job.status}: {job.error}\n{job.log_tail}"
        return (job.result or {}).get("endpoint")

    found = wait_for(endpoint, 120, what="the server to listen")
    wait_for(lambda: httpx.get(found["url"] + "/health").status_code == 200, 120, what="the models to load")
    return job_id, found


@dataclass
class Served:
    home: Path
    job_id: int
    url: str
    api_base: str
    model: object
    tokenizer: object

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api_base, api_key=key, max_retries=0, timeout=60)

    def greedy(self, text: str, max_new_tokens: int, special: bool) -> tuple[str, list[int], int]:
        """(text, new ids, prompt tokens) of plain `model.generate`, greedy."""
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=special)
        with torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        return self.tokenizer.decode(new, skip_special_tokens=True), new, ids["input_ids"].shape[1]

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the module: a tiny llama (PyTorch) and its ONNX export
    (onnxruntime) behind an API key, with small limits."""
    home = tmp_path_factory.mktemp("serving") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMDEV_HOME", str(home))
        mp.delenv("DATABASE_URL", raising=False)
        db.dispose_engines()
        ok(jobs.submit(CreateModelSpec(name="tiny", arch="llama", size="tiny", seed=3)))
        ok(jobs.submit(ExportOnnxSpec(model="tiny", output_name="tiny-onnx", verify_steps=4)))
        job_id, endpoint = start_server(ServeSpec(models=["tiny"], exports=["tiny-onnx"], port=0, api_key=KEY,
                                                  max_tokens=200, max_request_kb=16))
        # the server outlives the tests between (their `home` teardown waits for the workers it knows)
        mine = [p for p in jobs._children if p.poll() is None]
        jobs._children[:] = [p for p in jobs._children if p not in mine]
        model, tok = generate.load(models.find("tiny"))
        yield Served(home, job_id, endpoint["url"], endpoint["api_base"], model, tok)
        jobs.cancel(job_id)
        jobs.wait(job_id, timeout_s=60)
        jobs._children.extend(mine)
        _stop_workers(home)
        db.dispose_engines()


# --- the API -----------------------------------------------------------------------------------


def test_models_completion_and_chat_answer_like_greedy_generate(served):
    client = served.client()
    assert sorted((m.id, m.backend) for m in client.models.list()) == [("tiny", "torch"), ("tiny-onnx", "onnx")]

    prompt = "The sky is"
    reply = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0)
    text, ids, prompt_tokens = served.greedy(prompt, 24, special=True)
    assert reply.choices[0].text == text
    assert reply.usage.prompt_tokens == prompt_tokens and reply.usage.completion_tokens == len(ids)
    assert reply.usage.total_tokens == prompt_tokens + len(ids)
    assert reply.choices[0].finish_reason == ("stop" if len(ids) < 24 else "length")

    messages = [{"role": "user", "content": "Tell me about bees."}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    text, ids, prompt_tokens = served.greedy(generate.prompt_text(served.tokenizer, messages), 20, special=False)
    assert chat.choices[0].message.content == text and chat.choices[0].message.role == "assistant"
    assert chat.usage.prompt_tokens == prompt_tokens and chat.usage.completion_tokens == len(ids)


def test_streamed_chunks_add_up_to_the_whole_answer_and_its_usage(served):
    client = served.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What do bees make?"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=30, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=30, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # it streamed, not one lump
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])

    completion = list(client.completions.create(model="tiny", prompt="Bees make", max_tokens=16, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in completion) == served.greedy("Bees make", 16, special=True)[0]

    with httpx.stream("POST", served.api_base + "/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tiny", "prompt": "Hi", "max_tokens": 4, "stream": True}) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert raw.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]"


def test_a_stop_string_ends_the_answer_before_it(served):
    client = served.client()
    full, _, _ = served.greedy("Once upon a time", 40, special=True)
    words = [w for w in full.split(" ") if len(w) >= 2]
    assert words, f"the greedy text has no word to stop at: {full!r}"
    stop = words[len(words) // 2]
    reply = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=40, temperature=0, stop=[stop])
    assert reply.choices[0].text == full[:full.find(stop)]
    assert reply.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=40, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[:full.find(stop)]


def test_a_seed_gives_the_same_sample_and_sampling_follows_the_settings(served):
    client = served.client()
    ask = dict(model="tiny", prompt="Bees", max_tokens=24, temperature=1.0, top_p=0.95)
    first = client.completions.create(seed=11, **ask).choices[0].text
    assert client.completions.create(seed=11, **ask).choices[0].text == first
    samples = {client.completions.create(**ask).choices[0].text for _ in range(4)}
    greedy = client.completions.create(model="tiny", prompt="Bees", max_tokens=24, temperature=0).choices[0].text
    assert len(samples | {greedy}) > 1  # unseeded temperature-1 samples are not all the greedy answer


@pytest.mark.fast
def test_per_request_sampling_in_one_batch_keeps_greedy_rows_greedy():
    """The manager takes the argmax of what `_cheap_sampling` leaves: a greedy row is
    untouched, a sampled row keeps exactly one token, top-p 0 keeps the best one."""
    from core.serving.engines import _cheap_sampling

    processors = _cheap_sampling()
    scores = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    args = torch.zeros(processors.tensors_required, 4, dtype=torch.int32)
    temperature = torch.tensor([0.0, 1.0, 0.7, 1.0])
    top_p = torch.tensor([1.0, 1.0, 1.0, 1e-6])
    args[0], args[1], args[2] = temperature.view(torch.int32), top_p.view(torch.int32), temperature.view(torch.int32)
    out = processors(torch.zeros(4, dtype=torch.long), scores.clone(), args)
    assert torch.equal(out[0], scores[0])  # greedy: left for the argmax
    assert [int(torch.isfinite(row).sum()) for row in out[1:]] == [1, 1, 1]  # a drawn token each
    assert int(out[3].argmax()) == int(scores[3].argmax())  # top-p ~0: only the best token can be drawn
    all_greedy = torch.zeros_like(args)
    all_greedy[1] = torch.ones(4).view(torch.int32)
    assert torch.equal(processors(torch.zeros(4, dtype=torch.long), scores.clone(), all_greedy), scores)


def test_bad_requests_get_openai_errors_with_the_right_codes(served):
    with pytest.raises(openai.AuthenticationError) as bad_key:
        served.client("wrong").models.list()
    assert bad_key.value.status_code == 401 and bad_key.value.code == "invalid_api_key"
    assert httpx.get(served.api_base + "/models").status_code == 401  # no key at all

    client = served.client()
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="nope", prompt="Hi", max_tokens=2)
    assert unknown.value.code == "model_not_found" and "nope" in unknown.value.message

    with pytest.raises(openai.APIStatusError) as big:
        client.completions.create(model="tiny", prompt="word " * 5000, max_tokens=2)  # ~25 KB > 16 KiB
    assert big.value.status_code == 413 and big.value.code == "request_too_large"

    with pytest.raises(openai.BadRequestError) as two:
        client.completions.create(model="tiny", prompt="Hi", max_tokens=2, n=2)
    assert two.value.param == "n" and "one choice per request" in two.value.message
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert tools.value.param == "tools" and "not supported" in tools.value.message
    with pytest.raises(openai.BadRequestError) as unknown_field:
        client.completions.create(model="tiny", prompt="Hi", max_tokens=2, extra_body={"beam_width": 3})
    assert unknown_field.value.param == "beam_width"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.completions.create(model="tiny", prompt="Hi", max_tokens=500)
    assert too_many.value.param == "max_tokens" and "allows (200)" in too_many.value.message
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="tiny", prompt="a b c d e f g h " * 40, max_tokens=8)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as hot:
        client.completions.create(model="tiny", prompt="Hi", max_tokens=2, temperature=3)
    assert hot.value.param == "temperature"

    raw = httpx.post(served.api_base + "/chat/completions", content=b"{not json",
                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]


def test_health_and_prometheus_metrics(served):
    health = httpx.get(served.url + "/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "models": ["tiny", "tiny-onnx"]}
    assert httpx.get(served.url + "/metrics").status_code == 401  # behind the key like /v1
    before = served.metric("llmdev_completion_tokens_total")
    reply = served.client().completions.create(model="tiny", prompt="Hello", max_tokens=10, temperature=0)
    assert served.metric("llmdev_completion_tokens_total") == before + reply.usage.completion_tokens
    assert served.metric("llmdev_requests_total") >= 1
    assert served.metric("llmdev_time_to_first_token_seconds_count") >= 1
    assert served.metric("llmdev_requests_in_flight") == 0


def test_a_client_that_leaves_mid_stream_stops_its_generation(served):
    before = served.metric("llmdev_completion_tokens_total")
    gone = served.metric("llmdev_requests_disconnected_total")
    with httpx.stream("POST", served.api_base + "/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tiny", "prompt": "Go on", "max_tokens": 200, "temperature": 0.9,
                            "stream": True}) as raw:
        for n, _ in enumerate(raw.iter_lines()):
            if n >= 2:
                break  # closes the connection
    wait_for(lambda: served.metric("llmdev_requests_disconnected_total") == gone + 1, 30, what="the server to notice")
    wait_for(lambda: served.metric("llmdev_requests_in_flight") == 0, 30, what="the request to end")
    made = served.metric("llmdev_completion_tokens_total") - before
    assert made < 200, f"the generation ran on to {made} tokens after the client left"


def test_four_concurrent_streaming_clients_each_get_their_own_greedy_answer(served):
    prompts = ["The cat", "Bees make honey because", "Once upon a time", "Numbers: 1 2 3"]
    expected = [served.greedy(p, 32, special=True)[0] for p in prompts]
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        stream = served.client().completions.create(model="tiny", prompt=prompts[i], max_tokens=32, temperature=0,
                                                    stream=True)
        got[i] = "".join(c.choices[0].text for c in stream)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got.get(i) for i in range(4)] == expected


def test_the_onnx_backend_answers_as_pytorch_does_batched_and_seeded(served):
    prompts = ["The cat", "Bees make honey because", "Once upon a time", "Numbers: 1 2 3"]
    expected = [served.greedy(p, 24, special=True) for p in prompts]
    got: dict[int, tuple[str, int]] = {}

    def ask(i: int) -> None:
        stream = served.client().completions.create(model="tiny-onnx", prompt=prompts[i], max_tokens=24, temperature=0,
                                                    stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        got[i] = ("".join(c.choices[0].text for c in chunks if c.choices), chunks[-1].usage.completion_tokens)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got.get(i) for i in range(4)] == [(text, len(ids)) for text, ids, _ in expected]

    client = served.client()
    messages = [{"role": "user", "content": "What do bees make?"}]
    by_torch = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0)
    by_onnx = client.chat.completions.create(model="tiny-onnx", messages=messages, max_tokens=16, temperature=0)
    assert by_onnx.choices[0].message.content == by_torch.choices[0].message.content
    assert by_onnx.usage == by_torch.usage

    ask_seeded = dict(model="tiny-onnx", prompt="Bees", max_tokens=16, temperature=1.0, top_p=0.9, seed=5)
    assert client.completions.create(**ask_seeded).choices[0].text == client.completions.create(**ask_seeded).choices[0].text

    with pytest.raises(exports.ExportError, match="in use by job"):
        exports.delete(exports.find("tiny-onnx").id)  # not while it is served


# --- the service ---------------------------------------------------------------------------------


@pytest.mark.fast
def test_a_non_loopback_address_needs_a_key():
    with pytest.raises(SpecError) as caught:
        ServeSpec(models=["tiny"], host="0.0.0.0")
    assert caught.value.field == "api_key" and "0.0.0.0" in str(caught.value)
    assert ServeSpec(models=["tiny"], host="0.0.0.0", api_key="k").host == "0.0.0.0"
    assert ServeSpec(models=["tiny"], host="::1").host == "::1"  # loopback needs none
    with pytest.raises(SpecError, match="named twice"):
        ServeSpec(models=["tiny", "tiny"])


def test_a_taken_port_is_refused_with_who_holds_it(home, cli):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(SpecError) as caught:
            jobs.submit(ServeSpec(models=["tiny"], port=port))
        assert caught.value.field == "port" and f"port {port} on 127.0.0.1 is taken" in str(caught.value)
        assert f"process {os.getpid()}" in str(caught.value)
        assert jobs.list_jobs() == [] and not (home / "runs").exists()  # nothing written
        out = cli("serve", "--model", "tiny", "--port", str(port))
        assert out.returncode == 2 and "is taken" in out.stderr
    out = cli("serve", "--model", "tiny", "--host", "0.0.0.0")
    assert out.returncode == 2 and "API key" in out.stderr


def test_a_server_takes_no_slot_serves_an_adapter_and_ends_stopped_or_lost(served):
    """With one heavy slot (the default), a training run and a judge evaluation run
    while the server is up (the judge asks the served model); the adapter trained
    meanwhile is served by `python -m core serve`, which says where it listens, and
    answers like PeftModel.generate; a server whose process is SIGKILLed is marked
    lost; another process stops the first one."""
    facts = served.home.parent / "facts.jsonl"
    facts.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in FACTS * 2))
    ok(jobs.submit(ImportDatasetSpec(path=str(facts), name="facts", validation_fraction=0)))
    assert jobs.lane(jobs.get(served.job_id)) == "service"
    train = jobs.submit(SFTSpec(model="tiny", dataset="facts", output_name="adapter", method="lora", max_steps=3,
                                batch_size=2, learning_rate=5e-3, save_steps=10, eval_steps=0))
    wait_for(lambda: jobs.get(train).status != "queued", 30, what="the training run to start beside the server")
    ok(train)
    with pytest.raises(SpecError) as no_export:  # --backend onnx needs the model's ONNX export
        jobs.submit(ServeSpec(models=["adapter"], backend="onnx", port=0))
    assert no_export.value.field == "backend" and "export onnx --model adapter" in str(no_export.value)
    with pytest.raises(SpecError, match="no export"):
        jobs.submit(ServeSpec(exports=["nothing-here"], port=0))

    judge.save_rubric("short", "Q: {question} A: {answer} R: {reference} score:", 1, 5)
    spec = EvalJudgeSpec(model="tiny", dataset="facts", max_samples=2, max_new_tokens=4, rubric="short",
                         judge_url=served.api_base, judge_api_key=KEY, judge_endpoint_model="tiny",
                         judge_max_new_tokens=8)
    by_server = ok(jobs.submit(spec))
    assert by_server.result["metrics"]["judge_errors"] == 0 and by_server.result["metrics"]["samples"] == 2
    local = ok(jobs.submit(spec.model_copy(update=dict(judge_url="", judge_api_key="", judge_endpoint_model="",
                                                        judge_model="tiny"))))
    # the served model judges exactly as the same model loaded by the job
    from core.evaluation import results as evals

    replies = [[s["extra"]["judge_reply"] for s in evals.samples(j.id)] for j in (by_server, local)]
    assert replies[0] == replies[1]

    # the adapter, served from the command line
    out = subprocess.run([sys.executable, "-m", "core", "serve", "--model", "adapter", "--port", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout.split()[-1])
    url = (jobs.get(job_id).result or {})["endpoint"]["url"]
    assert f"listening on {url}" in out.stderr and f"jobs stop {job_id}" in out.stderr
    wait_for(lambda: httpx.get(url + "/health").status_code == 200, 120, what="the adapter to load")

    model, tok = generate.load(models.find("adapter"))
    ids = tok("What do bees make?", return_tensors="pt")
    with torch.no_grad():
        new = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids["input_ids"].shape[1]:]
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    reply = client.completions.create(model="adapter", prompt="What do bees make?", max_tokens=12, temperature=0)
    assert reply.choices[0].text == tok.decode(new, skip_special_tokens=True)

    import psutil

    supervisor = psutil.Process(jobs.get(job_id).pid)
    for proc in supervisor.children(recursive=True) + [supervisor]:
        proc.send_signal(signal.SIGKILL)

    def ended():
        jobs.refresh()  # what any page or command does when it looks
        job = jobs.get(job_id)
        return job if job.status != "running" else None

    job = wait_for(ended, 60, what="the server to be marked lost")
    assert job.status == "failed" and job.error_class == "lost"

    # a new process (the CLI) stops the server this process started
    out = subprocess.run([sys.executable, "-m", "core", "jobs", "stop", str(served.job_id), "--wait"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "stopped" in out.stdout, out.stderr
    job = jobs.get(served.job_id)
    assert job.status == "stopped" and job.error_class is None
    assert job.result["endpoint"]["url"] == served.url  # where it was, kept
    with pytest.raises(httpx.ConnectError):
        httpx.get(served.url + "/health")
