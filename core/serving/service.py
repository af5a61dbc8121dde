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

import ipaddress
import socket
import threading
import time
from typing import Any, ClassVar, Optional

from pydantic import Field, field_validator, model_validator

from core.jobs.run import BadInput, Cancelled, Run
from core.spec import Spec, SpecError


class ServeSpec(Spec):
    """Serve registered models (adapters are put on their base) over an
    OpenAI-compatible HTTP API, batching concurrent requests, until stopped."""

    kind: ClassVar[str] = "serve"
    command: ClassVar[tuple[str, ...]] = ("serve",)
    service: ClassVar[bool] = True
    busy: ClassVar[str] = "being served"
    input_models: ClassVar[tuple[str, ...]] = ("models",)
    secrets: ClassVar[tuple[str, ...]] = ("api_key",)
    flags: ClassVar[dict[str, str]] = {"models": "model"}

    models: list[str] = Field(min_length=1)
    """Models to serve, by name or id; clients ask for them by name."""
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

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        names = [str(v).strip() for v in value if str(v).strip()]
        if not names:
            raise ValueError("name at least one model to serve")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} is named twice")
        return names

    @model_validator(mode="after")
    def _address(self) -> "ServeSpec":
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
        return f"Serve {', '.join(repr(m) for m in self.models)} on {self.host}:{self.port or 'a free port'}"

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
        if self.port:
            problem = port_problem(self.host, self.port)
            if problem:
                raise SpecError("port", problem)


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """How a client on this machine reaches an address (a wildcard: loopback)."""
    if host in ("0.0.0.0", ""):
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


# --- the job --------------------------------------------------------------------------------


def run_serve(spec: ServeSpec, run: Run) -> dict[str, Any]:
    import uvicorn

    from core.models import registry as models
    from core.serving.engines import TorchEngine
    from core.serving.openai_api import Limits, State, create_app

    try:
        sock = bind(spec.host, spec.port)
    except OSError:
        raise BadInput(port_problem(spec.host, spec.port) or f"cannot listen on {spec.host}:{spec.port}") from None
    port = sock.getsockname()[1]
    rows = [models.get(i) for i in run.model_ids]
    state = State(
        api_key=spec.api_key,
        limits=Limits(max_tokens=spec.max_tokens, max_body_bytes=spec.max_request_kb * 1024),
        loading=[r.name for r in rows],
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
    endpoint = {"url": base, "api_base": f"{base}/v1", "host": spec.host, "port": port, "models": state.loading[:],
                "auth": bool(spec.api_key)}
    run.publish({"endpoint": endpoint})
    print(f"listening on {base} (loading {', '.join(state.loading)})", flush=True)
    try:
        for i, row in enumerate(rows):
            run.progress(i, len(rows), f"loading '{row.name}' (listening on {base})", force=True)
            run.check_cancel()
            state.engines[row.name] = TorchEngine(row, cache_tokens=spec.cache_tokens, batch_tokens=spec.batch_tokens)
            state.loading.remove(row.name)
        run.progress(len(rows), len(rows), f"serving at {base}/v1", force=True)
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
