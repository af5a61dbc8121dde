"""Serving pieces of the Export page: start an OpenAI-compatible server or a
Triton deployment, the running ones with their URL, copyable `curl`, `openai`
and `tritonclient` snippets, a test request, and stop."""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

import streamlit as st

from core.access import accounts
from core.export import registry as exports
from core.jobs import lifecycle as jobs
from core.kinds import traits
from core.models import registry as models
from core.serving import service, triton_deploy
from core.serving.service import ServeSpec
from core.serving.triton_deploy import DeployTritonSpec
from core.spec import SpecError
from ui import access, forms

FORM = "srv_"
"""The server form's widget keys start with this (kept while the tab is closed)."""
KEY_VAR = "LLMDEV_API_KEY"
"""The environment variable the snippets read the key from (never printed)."""


def spec_form() -> Optional[ServeSpec]:
    """The new-server form; a valid spec or None (what is missing shown)."""
    usable = [m.name for m in models.list_models() if m.status == "available" and not models.is_reward_model(m)]
    graphs = [e.name for e in exports.list_exports() if e.format == "onnx" and e.status == "available"]
    if not usable and not graphs:
        st.info("Serving needs a model: create, import or train one first (Models page).")
        return None
    c = st.columns(3)
    chosen = c[0].multiselect("Models", usable, default=usable[:1], key="srv_models", help=ServeSpec.doc("models"))
    backend = forms.field(ServeSpec, "backend", "Models run with", key="srv_backend", where=c[1], horizontal=True)
    onnx = c[2].multiselect("ONNX exports", graphs, key="srv_exports", help=ServeSpec.doc("exports"))
    c = st.columns(4)
    host = forms.field(ServeSpec, "host", "Address", key="srv_host", where=c[0])
    port = forms.field(ServeSpec, "port", "Port (0: any free)", key="srv_port", where=c[1])
    max_tokens = forms.field(ServeSpec, "max_tokens", "Max tokens per request", key="srv_max_tokens", where=c[2])
    api_key = c[3].text_input("API key (needed off 127.0.0.1)", type="password", key="srv_api_key",
                              help=ServeSpec.doc("api_key"))
    try:
        return ServeSpec(models=chosen, backend=backend, exports=onnx, host=host, port=port or 0,
                         max_tokens=max_tokens or ServeSpec.default("max_tokens"), api_key=api_key)
    except SpecError as exc:
        st.error(forms.page_words(str(exc)))
        return None


def _servers() -> list:
    return [j for j in jobs.list_jobs(limit=200) if traits(j.kind).service]


def _starting(active: list) -> bool:
    """A server that does not answer yet (starting, or loading its models)."""
    for job in active:
        endpoint = (job.result or {}).get("endpoint")
        if not endpoint:
            return True
        if endpoint.get("protocol") != "triton" and service.health(endpoint["url"], 0.5).get("status") != "ok":
            return True
    return False


def servers_panel() -> None:
    """Every server that runs, with its endpoint; those that ended below. While one
    is starting the panel redraws itself every 2 s, and the page once it is ready."""
    starting = _starting([j for j in _servers() if j.status == "running"])
    st.fragment(_servers_panel, run_every=2.0 if starting else None)(starting)


def _servers_panel(was_starting: bool) -> None:
    servers = _servers()
    active = [j for j in servers if j.status in jobs.ACTIVE]
    if was_starting and not _starting([j for j in active if j.status == "running"]):
        st.rerun()  # ready (or gone): the page stops polling
    if not active:
        st.info("No server is running: start one above.")
    for job in active:
        with st.container(border=True):
            server_card(job)
    ended = [j for j in servers if j.status not in jobs.ACTIVE][:5]
    if ended:
        st.caption("Ended: " + " · ".join(
            f"#{j.id} {j.status}" + (f" ({j.error_class}: {j.error})" if j.error_class else "") for j in ended))


def server_card(job) -> None:
    endpoint = (job.result or {}).get("endpoint")
    top = st.columns([5, 1])
    owner = accounts.owner_of(job.owner_id)
    top[0].markdown(f"**#{job.id} {job.title}**" + (f" · {owner}'s" if owner else ""))
    if access.may_change(job.owner_id) and top[1].button("Stop", key=f"serve_stop_{job.id}", icon=":material/stop_circle:"):
        try:
            st.toast(f"Job {job.id}: {jobs.cancel(job.id, by=access.actor())}")
        except ValueError as exc:
            st.toast(f"Not stopped: {exc}")
        st.rerun()
    if not endpoint:
        st.caption(jobs.progress(job).message)
        return
    if endpoint.get("protocol") == "triton":
        state = {"status": "ok" if triton_deploy.ready(endpoint["url"]) else "unreachable"}
    else:
        state = service.health(endpoint["url"])
    word = {"ok": ":green[ready]", "loading": ":orange[loading models]"}.get(state.get("status"),
                                                                             f":red[{state.get('status')}]")
    if endpoint.get("protocol") == "triton":
        st.markdown(f"{word} · HTTP `{endpoint['url']}` · gRPC `{endpoint['grpc']}` · models "
                    f"{', '.join(endpoint['models'])}")
    else:
        st.markdown(f"{word} · API base `{endpoint['api_base']}` · "
                    f"{'key required' if endpoint.get('auth') else 'no key (this machine only)'}")
    if state.get("error"):
        st.error(state["error"])
    if endpoint.get("protocol") == "triton":
        triton_card(job.id, endpoint)
        return
    model = endpoint["models"][0]
    curl, python, test = st.tabs(["curl", "Python (openai)", "Test request"])
    with curl:
        st.code(curl_snippet(endpoint, model), language="bash")
    with python:
        st.code(python_snippet(endpoint, model), language="python")
    with test:
        test_box(job.id, endpoint, ready=state.get("status") == "ok")


def curl_snippet(endpoint: dict[str, Any], model: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64})
    auth = f' \\\n  -H "Authorization: Bearer ${KEY_VAR}"' if endpoint.get("auth") else ""
    return (f"curl {endpoint['api_base']}/chat/completions \\\n  -H \"Content-Type: application/json\"{auth} \\\n"
            f"  -d '{body}'")


def python_snippet(endpoint: dict[str, Any], model: str) -> str:
    key = f'os.environ["{KEY_VAR}"]' if endpoint.get("auth") else '"none"'
    return "\n".join([
        "import os",
        "",
        "from openai import OpenAI",
        "",
        f'client = OpenAI(base_url="{endpoint["api_base"]}", api_key={key})',
        "stream = client.chat.completions.create(",
        f'    model="{model}",',
        '    messages=[{"role": "user", "content": "Hello!"}],',
        "    max_tokens=64,",
        "    stream=True,",
        ")",
        "for chunk in stream:",
        '    print(chunk.choices[0].delta.content or "", end="", flush=True)',
    ])


def test_box(job_id: int, endpoint: dict[str, Any], ready: bool) -> None:
    """Send one chat completion to the server, as a client would, and show the reply."""
    found = next((e for e in service.live_endpoints() if e["job_id"] == job_id), endpoint)
    c = st.columns([2, 1])
    model = c[0].selectbox("Model", endpoint["models"], key=f"srv_test_model_{job_id}")
    max_tokens = c[1].number_input("Max tokens", 1, 4096, 64, key=f"srv_test_tokens_{job_id}")
    prompt = st.text_area("Message", "Hello! Who are you?", key=f"srv_test_prompt_{job_id}", height=80)
    reply = _sent(f"srv_test_reply_{job_id}", f"serve_test_send_{job_id}",
                  lambda: service.send_test_request(found, model, prompt, int(max_tokens)), disabled=not ready or not access.can_run(),
                  help=None if ready else "the models are still loading")
    if reply:
        st.markdown("**Reply**")
        st.text(shown_reply(reply["content"]))
        usage = reply["usage"]
        st.caption(f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} new tokens · "
                   f"finish: {reply['finish_reason']} · {reply['seconds']:.2f} s")


def _sent(state_key: str, button_key: str, send: Callable[[], dict], **button: Any) -> Optional[dict]:
    """The "Send test request" button: the last reply kept in the session (None
    before one, or when it failed: the error is shown)."""
    if st.button("Send test request", key=button_key, type="primary", **button):
        try:
            st.session_state[state_key] = send()
        except ValueError as exc:
            st.session_state[state_key] = {"error": str(exc)}
    reply = st.session_state.get(state_key)
    if reply and reply.get("error"):
        st.error(reply["error"])
        return None
    return reply


def shown_reply(content: str) -> str:
    """A reply as the test box shows it (one that is only whitespace, visibly)."""
    return content if content.strip() else f"(only whitespace: {content!r})"


def triton_card(job_id: int, endpoint: dict[str, Any]) -> None:
    curl, python, test = st.tabs(["curl", "Python (tritonclient, gRPC)", "Test request"])
    with curl:
        body = json.dumps({"text_input": "The capital of France is", "max_tokens": 32})
        st.code(f"curl -N {endpoint['generate_stream']} \\\n  -d '{body}'", language="bash")
        st.caption("One server-sent event per piece of text. Plain `infer` is refused (501): the model streams.")
    with python:
        st.code(triton_snippet(endpoint), language="python")
    with test:
        c = st.columns([3, 1])
        prompt = c[0].text_input("Text to continue", "The capital of France is", key=f"srv_triton_prompt_{job_id}")
        max_tokens = c[1].number_input("Max tokens", 1, 4096, 32, key=f"srv_triton_tokens_{job_id}")
        reply = _sent(f"srv_triton_reply_{job_id}", f"serve_triton_send_{job_id}",
                      lambda: triton_deploy.send_triton_request(endpoint, prompt, int(max_tokens)))
        if reply:
            st.text(shown_reply(reply["text"]))
            st.caption(f"{len(reply['pieces'])} streamed pieces · {reply['seconds']:.2f} s")


def triton_snippet(endpoint: dict[str, Any]) -> str:
    return "\n".join([
        "import queue",
        "",
        "import numpy as np",
        "import tritonclient.grpc as grpcclient",
        "",
        "answers = queue.Queue()",
        f'client = grpcclient.InferenceServerClient(url="{endpoint["grpc"]}")',
        'text = grpcclient.InferInput("text_input", [1], "BYTES")',
        'text.set_data_from_numpy(np.array([b"The capital of France is"], dtype=np.object_))',
        "client.start_stream(callback=lambda result, error: answers.put((result, error)))",
        'client.async_stream_infer("text_generation", [text], enable_empty_final_response=True)',
        "while True:",
        "    result, error = answers.get()",
        "    if error or result.get_response().parameters[\"triton_final_response\"].bool_param:",
        "        break",
        '    print(result.as_numpy("text_output")[0].decode(), end="", flush=True)',
        "client.stop_stream()  # an open stream holds the server's shutdown",
        "client.close()",
    ])


def deploy_form() -> Optional[DeployTritonSpec]:
    repositories = [e.name for e in exports.list_exports() if e.format == "triton" and e.status == "available"]
    if not repositories:
        st.info("No Triton repository yet: make one in the New export tab (Triton model repository).")
        return None
    c = st.columns(3)
    export = c[0].selectbox("Triton repository", repositories, key="srv_triton_export", help=DeployTritonSpec.doc("export"))
    http = forms.field(DeployTritonSpec, "http_port", "HTTP port (0: any free)", key="srv_triton_http", where=c[1])
    grpc = forms.field(DeployTritonSpec, "grpc_port", "gRPC port (0: any free)", key="srv_triton_grpc", where=c[2])
    why = triton_deploy.env_problem()
    if why:
        st.caption(f"The first deployment prepares Triton's own environment (once, ~60 MB download): {why}")
    try:
        return DeployTritonSpec(export=export, http_port=http or 0, grpc_port=grpc or 0)
    except SpecError as exc:
        st.error(forms.page_words(str(exc)))
        return None


def serve_tab() -> None:
    """The Serve tab: the forms, Start, and the running servers and deployments."""
    sections = [
        ("OpenAI-compatible server", spec_form, "Start server", "serve_start",
         "A server is a service: it runs until stopped, takes no job slot (training and evaluations go on beside "
         "it), and keeps running when this page or the app closes. The LLM-as-judge evaluation can ask a served "
         "model (Evaluation page)."),
        ("Triton deployment", deploy_form, "Deploy to Triton", "serve_deploy",
         "A real Triton Inference Server (the one nvidia-pytriton bundles, Python backend only) on this machine: the "
         "repository's text model as exported, its ONNX decoder run by a Python-backend twin with the same tensors. "
         "In production, run the repository in NVIDIA's container (its README)."),
    ]
    for tab, (_, form, label, key, caption) in zip(st.tabs([s[0] for s in sections]), sections):
        with tab:
            spec = form()
            if spec is not None:
                forms.start(spec, label, key=key)
            st.caption(caption)
    st.divider()
    servers_panel()
