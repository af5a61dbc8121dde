"""Serve registered models over an OpenAI-compatible HTTP API; the `serve` job kind,
a service: it runs until stopped.

    python -m core serve --model NAME [--model NAME2 ...] [--host 127.0.0.1] [--port 8000]
                         [--api-key-env VAR] [--max-tokens N] [--wait] [--json]

The job binds its address first (a taken port is refused, saying who holds it),
starts listening at once (`/health` answers 503 while the models load) and
publishes its endpoint in the job's result, so the pages, the CLI and other jobs
(a judge) find it while it runs. Stopping it (`python -m core jobs stop ID`, the
Export page) ends it `stopped`. It takes no training slot.

It binds 127.0.0.1 unless told otherwise; any other address needs an API key,
which every /v1 request must then send as `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from core.jobs.run import BadInput, Cancelled, Run
from core.network import loopback
from core.spec import Output, Spec, SpecError


class ServeSpec(Spec):
    """Serve registered models (adapters are put on their base) over an
    OpenAI-compatible HTTP API, batching concurrent requests, until stopped."""

    kind: ClassVar[str] = "serve"
    command: ClassVar[tuple[str, ...]] = ("serve",)
    service: ClassVar[bool] = True
    output: ClassVar[Output] = "service"
    busy: ClassVar[str] = "being served"
    input_models: ClassVar[tuple[str, ...]] = ("models",)
    input_exports: ClassVar[tuple[str, ...]] = ("exports",)
    secrets: ClassVar[tuple[str, ...]] = ("api_key",)
    flags: ClassVar[dict[str, str]] = {"models": "model", "exports": "export"}

    models: list[str] = []
    """Registered models to serve (adapters too), by name or id; clients ask for them by name."""
    backend: Literal["torch", "onnx"] = "torch"
    """How the models run: torch (PyTorch), or onnx (onnxruntime, on each model's newest ONNX export)."""
    exports: list[str] = []
    """ONNX exports to serve (onnxruntime), by name or id; clients ask for them by the export's name."""
    host: str = "127.0.0.1"
    """Address to listen on. Anything but loopback needs an API key."""
    port: int = Field(8000, ge=0, le=65535)
    """Port to listen on (0: a free one, chosen when it starts)."""
    api_key: str = ""
    """Key every request must send as `Authorization: Bearer <key>` (stored with the job; shown masked).
    On the command line prefer --api-key-env VAR."""
    max_tokens: int = Field(1024, ge=1, le=32768)
    """The most new tokens one request may ask for (and what it gets when it does not say)."""
    max_request_kb: int = Field(1024, ge=1, le=1 << 20)
    """The largest request body, in KiB (a bigger one gets 413)."""
    cache_tokens: int = Field(16384, ge=256, le=1 << 22)
    """KV-cache room per model, in tokens: what the requests in flight hold together."""
    batch_tokens: int = Field(512, ge=16, le=1 << 16)
    """Tokens one forward pass may take (prompt chunks and decode steps of every request together)."""

    @field_validator("models", "exports")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        names = [str(v).strip() for v in value if str(v).strip()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} is named twice")
        return names

    @model_validator(mode="after")
    def _address(self) -> "ServeSpec":
        if not self.models and not self.exports:
            raise SpecError("models", "name at least one model (or ONNX export) to serve")
        self.host = self.host.strip()
        if not self.host:
            raise SpecError("host", "give an address to listen on, e.g. 127.0.0.1")
        if not loopback(self.host) and not self.api_key:
            raise SpecError(
                "api_key",
                f"listening on {self.host} lets other machines in: give an API key (--api-key-env VAR), "
                "or keep the default host 127.0.0.1",
            )
        return self

    def title(self) -> str:
        served = [repr(m) + (" (onnx)" if self.backend == "onnx" else "") for m in self.models]
        served += [repr(e) + " (onnx)" for e in self.exports]
        where = f"{self.host}:{self.port}" if self.port else f"{self.host}, a free port"
        return f"Serve {', '.join(served)} on {where}"

    def check_inputs(self) -> None:
        from core.inference.generate import usable
        from core.models import registry as models

        for ref in self.models:
            try:
                row = models.find(ref)
            except models.ModelError:
                continue  # a model that is not there is named when the job's inputs are resolved
            why = usable(row) if row.status == "available" else None
            if why:
                raise SpecError("models", why)
            if self.backend == "onnx":
                onnx_export_of(row)
        for ref in self.exports:
            served_graph(ref)
        if self.port and self.runner == "local":  # a Ray job binds on its node: told there if it cannot
            problem = port_problem(self.host, self.port)
            if problem:
                raise SpecError("port", problem)


def url_host(host: str) -> str:
    """How a client reaches an address: a wildcard is loopback on this machine, or
    the node's own address for a server running as a Ray job."""
    if host in ("0.0.0.0", ""):
        if os.environ.get("LLMDEV_RUNNER") == "ray":
            from ray.util import get_node_ip_address  # the address Ray's other nodes reach this one at

            return get_node_ip_address()
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); OSError with the reason if it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not a live listener: just TIME_WAIT leftovers
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def port_problem(host: str, port: int) -> Optional[str]:
    """Why (host, port) cannot be listened on now, in words (None: it can)."""
    try:
        bind(host, port).close()
        return None
    except OSError as exc:
        if exc.errno == 98:  # EADDRINUSE
            return f"port {port} on {host} is taken{_holder(port)}: choose another port, or 0 for a free one"
        if exc.errno == 99:  # EADDRNOTAVAIL
            return f"{host} is not an address of this machine"
        if exc.errno == 13:  # EACCES
            return f"port {port} needs administrator rights: choose a port above 1023, or 0 for a free one"
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def _holder(port: int) -> str:
    import psutil

    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f" (by process {conn.pid}, {' '.join(proc.cmdline()[:4]) or proc.name()})"
    except (psutil.Error, OSError):
        pass
    return ""


# --- ONNX exports ---------------------------------------------------------------------------


def served_graph(ref: str) -> tuple[Any, str]:
    """(export row, graph file) an ONNX export is served with: its most compact
    graph that verified within tolerance, else its fp32 graph. SpecError when it
    cannot be served."""
    from core.export import registry as exports

    try:
        row = exports.find_available(ref, "onnx", "serve an ONNX export (a Triton repository is deployed: "
                                     "python -m core deploy triton)")
    except exports.ExportError as exc:
        raise SpecError("exports", str(exc)) from None
    graphs = (row.details or {}).get("graphs") or {}
    checks = row.verification or {}
    for precision in ("int4", "int8", "fp32"):
        if precision in graphs and (checks.get(precision) or {}).get("ok"):
            return row, graphs[precision]
    return row, graphs.get("fp32", "model.onnx")


def onnx_export_of(model_row) -> Any:
    """A model's newest available ONNX export (for --backend onnx); SpecError if it has none."""
    from core.export import registry as exports

    found = [r for r in exports.list_exports() if r.model_id == model_row.id and r.format == "onnx" and r.status == "available"]
    if not found:
        raise SpecError("backend", f"'{model_row.name}' has no ONNX export: export it first (python -m core export "
                        f"onnx --model {model_row.name} --name {model_row.name}-onnx) or serve it with --backend torch")
    return found[-1]


def load_engines(spec: ServeSpec, rows: list):
    """(name, engine loader) for everything the spec serves, in order."""
    from core.serving.engines import OnnxEngine, TorchEngine
    from storage.db import data_home

    def onnx(ref: str, name: Optional[str] = None):
        row, graph = served_graph(ref)
        created = int(row.created_at.timestamp()) if row.created_at else int(time.time())
        return name or row.name, lambda: OnnxEngine(name or row.name, data_home() / row.path, graph, row.details or {},
                                                     created=created, threads=spec.threads or None)

    plan = []
    for row in rows:
        if spec.backend == "onnx":  # clients still ask for the model by its own name
            plan.append(onnx(str(onnx_export_of(row).id), row.name))
        else:
            plan.append((row.name, lambda row=row: TorchEngine(row, cache_tokens=spec.cache_tokens,
                                                               batch_tokens=spec.batch_tokens)))
    plan += [onnx(ref) for ref in spec.exports]
    return plan


# --- the job --------------------------------------------------------------------------------


def run_serve(spec: ServeSpec, run: Run) -> dict[str, Any]:
    import uvicorn

    from core.models import registry as models
    from core.serving.openai_api import Limits, State, create_app

    try:
        sock = bind(spec.host, spec.port)
    except OSError:
        raise BadInput(port_problem(spec.host, spec.port) or f"cannot listen on {spec.host}:{spec.port}") from None
    port = sock.getsockname()[1]
    try:
        plan = load_engines(spec, [models.get(i) for i in run.model_ids])
    except SpecError as exc:  # an export deleted or a model's export gone since the submit
        sock.close()
        raise BadInput(str(exc)) from None
    names = [name for name, _ in plan]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        sock.close()
        raise BadInput(f"two served models would both be called {', '.join(repeated)}: serve one of them")
    state = State(
        api_key=spec.api_key,
        limits=Limits(max_tokens=spec.max_tokens, max_body_bytes=spec.max_request_kb * 1024),
        loading=names,
    )
    server = uvicorn.Server(uvicorn.Config(
        create_app(state), log_level="warning", timeout_graceful_shutdown=3, timeout_keep_alive=5,
    ))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="http")
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    if not thread.is_alive():
        raise RuntimeError("the HTTP server did not start (see the log above)")
    base = f"http://{url_host(spec.host)}:{port}"
    endpoint = {"protocol": "openai", "url": base, "api_base": f"{base}/v1", "host": spec.host, "port": port, "models": state.loading[:],
                "auth": bool(spec.api_key)}
    run.publish({"endpoint": endpoint})
    print(f"listening on {base} (loading {', '.join(state.loading)})", flush=True)
    try:
        for i, (name, load) in enumerate(plan):
            run.progress(i, len(plan), f"loading '{name}' (listening on {base})", force=True)
            run.check_cancel()
            state.engines[name] = load()
            state.loading.remove(name)
        run.progress(len(plan), len(plan), f"serving at {base}/v1", force=True)
        print(f"serving {', '.join(state.engines)} at {base}/v1", flush=True)
        while not run.stop.is_set():
            if not thread.is_alive():
                raise RuntimeError("the HTTP server stopped on its own (see the log above)")
            broken = [name for name, engine in state.engines.items() if not engine.running]
            if broken:
                raise RuntimeError(f"generation stopped for {', '.join(broken)} (see the log above)")
            run.stop.wait(1.0)
    except Exception as exc:
        state.error = str(exc)
        raise
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        for engine in state.engines.values():
            engine.close()
    raise Cancelled("stopped", result={"endpoint": endpoint})


# --- reading ---------------------------------------------------------------------------------


def live_endpoints() -> list[dict[str, Any]]:
    """The running OpenAI-compatible services that listen, newest first: their job, URL, API base,
    models and key (for this platform's own pages and jobs: a judge, a test request)."""
    from core.jobs import lifecycle as jobs
    from core.kinds import traits

    found = []
    for job in jobs.list_jobs(status="running"):
        endpoint = (job.result or {}).get("endpoint")
        if traits(job.kind).service and endpoint and endpoint.get("api_base"):
            found.append(dict(endpoint, job_id=job.id, title=job.title, api_key=(job.spec or {}).get("api_key", "")))
    return found


def health(url: str, timeout: float = 1.0) -> dict[str, Any]:
    """A server's /health answer ({"status": "ok" | "loading" | "error" | "unreachable", ...})."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503 while loading, with its reason
        try:
            return json.loads(exc.read())
        except ValueError:
            return {"status": "error", "error": f"HTTP {exc.code}"}
    except (OSError, ValueError) as exc:
        return {"status": "unreachable", "error": str(exc)}


def send_test_request(endpoint: dict[str, Any], model: str, prompt: str, max_tokens: int = 64,
                 temperature: float = 0.0) -> dict[str, Any]:
    """One chat completion from a served model, as any client sends it: {"content",
    "usage", "finish_reason", "seconds"}; ValueError with the server's message."""
    import json
    import urllib.error
    import urllib.request

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": temperature}
    headers = {"Content-Type": "application/json"}
    if endpoint.get("api_key"):
        headers["Authorization"] = f"Bearer {endpoint['api_key']}"
    request = urllib.request.Request(endpoint["api_base"] + "/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise ValueError(f"the server answered {exc.code}: {message}") from None
    except OSError as exc:
        raise ValueError(f"the server did not answer: {exc}") from None
    choice = data["choices"][0]
    return {"content": choice["message"]["content"], "finish_reason": choice["finish_reason"], "usage": data["usage"],
            "seconds": time.perf_counter() - start}
