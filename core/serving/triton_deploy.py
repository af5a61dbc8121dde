"""Deploy an exported Triton repository to a real Triton Inference Server on this
machine; the `deploy_triton` job kind, a service (it runs until stopped).

    python -m core deploy setup-triton                 # once: Triton's own environment
    python -m core deploy triton --export NAME [--http-port P] [--grpc-port G] [--wait] [--json]

The server is the `tritonserver` (2.51, Python backend only) that the PyPI
package `nvidia-pytriton` bundles. It pins numpy<2, so it lives in its own
virtual environment (`LLMDEV_TRITON_ENV`, default `.venv-triton` in the
repository), made on demand as Triton has its own container in production.

A deployment serves a copy of the export's repository in its run folder
(the files linked, not copied): `text_generation` as exported, and `decoder`
as a Python-backend twin with the identical tensor contract
(core/serving/onnx_twin.py runs the same graph with onnxruntime), since the
bundled server has no onnxruntime backend. Clients talk to it as to any Triton:
HTTP `/v2/models/text_generation/generate_stream`, or a gRPC stream.

Traps handled here (see NOTES): the Python backend's stub must sit beside the
backend library; its embedded interpreter ignores PYTHONPATH and finds its
packages through the `python3` first on PATH (the environment's); with pyenv it
must load the matching libpython (LD_LIBRARY_PATH); exit timeout 5 s (less
skips `finalize` or leaks shared memory); a client's open gRPC stream holds
shutdown, so the server is killed after a grace period. The server dies with
the job's process (a SIGKILLed deployment leaves no orphan holding its ports).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

from pydantic import Field, model_validator

from core.jobs.run import BadInput, Cancelled, Run
from core.network import loopback
from core.serving.service import port_problem
from core.spec import Output, Spec, SpecError

PACKAGES = ("nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime==1.32.0", "tokenizers==0.23.3")
"""Triton's environment: the server, and what the repository's Python models import."""
REPO_ROOT = Path(__file__).resolve().parents[2]
TEXT_MODEL = "text_generation"
DECODER = "decoder"
EXIT_TIMEOUT_S = 5
STOP_GRACE_S = 15
READY_TIMEOUT_S = 180


# --- Triton's environment ------------------------------------------------------------------


def env_dir() -> Path:
    return Path(os.environ.get("LLMDEV_TRITON_ENV") or REPO_ROOT / ".venv-triton")


def _facts() -> Optional[dict[str, Any]]:
    path = env_dir() / "llmdev-triton.json"
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return facts if facts.get("packages") == list(PACKAGES) else None


def env_problem() -> Optional[str]:
    """Why Triton cannot start here now (None: its environment is ready)."""
    facts = _facts()
    if facts is None:
        return f"Triton's environment is not set up ({env_dir()}): run python -m core deploy setup-triton (downloads ~60 MB once)"
    if not Path(facts["tritonserver"]).is_file():
        return f"{facts['tritonserver']} is missing: run python -m core deploy setup-triton again"
    return None


def setup_env(log: Callable[[str], None] = print) -> dict[str, Any]:
    """Make Triton's environment (once; nothing half-made is left if it fails): a
    virtual environment with PACKAGES, the Python backend's stub put beside the
    backend, and what starting the server needs recorded in llmdev-triton.json."""
    facts = _facts()
    if facts is not None and env_problem() is None:
        return facts
    final = env_dir()
    shutil.rmtree(final, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    try:
        log(f"creating {final} with {base}")
        subprocess.run([base, "-m", "venv", str(final)], check=True)
        python = final / "bin" / "python"
        log(f"installing {' '.join(PACKAGES)}")
        subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *PACKAGES], check=True)
        found = subprocess.run(
            [str(python), "-c", "import sys, sysconfig, pytriton, pathlib; "
             "print(pathlib.Path(pytriton.__file__).parent / 'tritonserver'); print(sysconfig.get_config_var('LIBDIR')); "
             "print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
            check=True, capture_output=True, text=True,
        ).stdout.split("\n")
        server_dir, libdir, version = Path(found[0]), found[1], found[2]
        stub = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise RuntimeError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
        # the backend looks for its stub beside itself (pytriton copies it there at run time)
        shutil.copy2(stub, server_dir / "backends" / "python" / stub.name)
        facts = {
            "packages": list(PACKAGES),
            "tritonserver": str(server_dir / "bin" / "tritonserver"),
            "backends": str(server_dir / "backends"),
            "bin": str(final / "bin"),
            "libdir": libdir,
            "python": version,
        }
        # written last: an environment without it is not ready (and is made again)
        (final / "llmdev-triton.json").write_text(json.dumps(facts, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    log(f"Triton's environment is ready: {final}")
    return facts


# --- the deployment's repository ----------------------------------------------------------------


def twin_config(text: str, graph: str, threads: int) -> str:
    """The exported decoder's config.pbtxt for the Python-backend twin: the same
    tensors; backend python; the graph named as a parameter; on the CPU."""
    lines = []
    for line in text.splitlines():
        if line.startswith("backend:"):
            line = 'backend: "python"'
        elif line.startswith("default_model_filename:"):
            continue
        elif line.startswith("instance_group"):
            line = "instance_group [ { count: 1 kind: KIND_CPU } ]"
        lines.append(line)
    lines.append(f'parameters {{ key: "graph" value: {{ string_value: "{graph}" }} }}')
    lines.append(f'parameters {{ key: "threads" value: {{ string_value: "{threads}" }} }}')
    return "\n".join(lines) + "\n"


def build_repository(export_dir: Path, graph: str, out: Path, threads: int = 0) -> Path:
    """The repository a deployment serves, in `out`: the export's files linked,
    the decoder replaced by its Python-backend twin."""
    shutil.rmtree(out, ignore_errors=True)
    for model in (TEXT_MODEL, DECODER):
        (out / model / "1").mkdir(parents=True)
        for path in (export_dir / model / "1").iterdir():
            (out / model / "1" / path.name).symlink_to(path)
    shutil.copy2(export_dir / TEXT_MODEL / "config.pbtxt", out / TEXT_MODEL / "config.pbtxt")
    text = (export_dir / DECODER / "config.pbtxt").read_text()
    (out / DECODER / "config.pbtxt").write_text(twin_config(text, graph, threads))
    shutil.copy2(Path(__file__).with_name("onnx_twin.py"), out / DECODER / "1" / "model.py")
    return out


# --- the job ------------------------------------------------------------------------------------


class DeployTritonSpec(Spec):
    """Deploy an exported Triton repository to Triton Inference Server on this
    machine (the server nvidia-pytriton bundles), until stopped."""

    kind: ClassVar[str] = "deploy_triton"
    command: ClassVar[tuple[str, ...]] = ("deploy", "triton")
    service: ClassVar[bool] = True
    output: ClassVar[Output] = "service"
    busy: ClassVar[str] = "deployed"
    input_exports: ClassVar[tuple[str, ...]] = ("export",)

    export: str = Field(min_length=1)
    """The Triton repository to serve (an export made with `export triton`), by name or id."""
    host: str = "127.0.0.1"
    """Address to listen on. The bundled server has no authentication: loopback only."""
    http_port: int = Field(0, ge=0, le=65535)
    """HTTP port (0: a free one)."""
    grpc_port: int = Field(0, ge=0, le=65535)
    """gRPC port (0: a free one)."""

    @model_validator(mode="after")
    def _loopback(self) -> "DeployTritonSpec":
        if not loopback(self.host):
            raise SpecError("host", f"this Triton has no authentication, so it listens on this machine only "
                            f"(not {self.host}); to serve others, run the repository in NVIDIA's container (its README)")
        if self.http_port and self.http_port == self.grpc_port:
            raise SpecError("grpc_port", "give HTTP and gRPC different ports")
        return self

    def title(self) -> str:
        return f"Deploy '{self.export}' to Triton on {self.host}"

    def check_inputs(self) -> None:
        triton_export(self.export)
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            problem = port_problem(self.host, port) if port else None
            if problem:
                raise SpecError(name, problem)


def triton_export(ref: str):
    """An available Triton export by name or id (SpecError otherwise)."""
    from core.export import registry as exports

    try:
        return exports.find_available(ref, "triton", "deploy a Triton repository (python -m core export triton ...), "
                                      "or serve an ONNX export with python -m core serve --export")
    except exports.ExportError as exc:
        raise SpecError("export", str(exc)) from None


def _free_port(host: str) -> int:
    from core.serving.service import bind

    with bind(host, 0) as sock:
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process, before exec: be killed when the job's process dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def run_deploy_triton(spec: DeployTritonSpec, run: Run) -> dict[str, Any]:
    from storage.db import data_home

    try:
        row = triton_export(spec.export)
    except SpecError as exc:
        raise BadInput(str(exc)) from None
    if env_problem() is not None:
        run.progress(0, 3, "preparing Triton's environment (once: ~60 MB download)", force=True)
        setup_env(lambda line: print(line, flush=True))
    facts = _facts()
    run.progress(1, 3, "building the deployment's repository", force=True)
    export_dir = data_home() / row.path
    repo = build_repository(export_dir, _graph_of(export_dir), run.dir / "repository", threads=spec.threads)
    ports = {}
    for name in ("http_port", "grpc_port"):
        port = getattr(spec, name)
        if port and port_problem(spec.host, port):
            raise BadInput(port_problem(spec.host, port))
        ports[name] = port or _free_port(spec.host)
    env = dict(os.environ, PATH=f"{facts['bin']}{os.pathsep}{os.environ.get('PATH', '')}")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (facts["libdir"], os.environ.get("LD_LIBRARY_PATH")) if p)
    command = [
        facts["tritonserver"], f"--model-repository={repo}", f"--backend-directory={facts['backends']}",
        f"--http-address={spec.host}", f"--grpc-address={spec.host}",
        f"--http-port={ports['http_port']}", f"--grpc-port={ports['grpc_port']}",
        "--allow-metrics=false", "--allow-gpu-metrics=false", "--allow-cpu-metrics=false",
        f"--exit-timeout-secs={EXIT_TIMEOUT_S}", "--log-verbose=0",
    ]
    run.progress(2, 3, "starting tritonserver", force=True)
    print("$ " + " ".join(command), flush=True)
    server = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    url = f"http://{spec.host}:{ports['http_port']}"
    endpoint = {
        "protocol": "triton", "url": url, "grpc": f"{spec.host}:{ports['grpc_port']}", "models": [TEXT_MODEL, DECODER],
        "generate_stream": f"{url}/v2/models/{TEXT_MODEL}/generate_stream", "repository": str(repo), "export": row.name,
    }
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready(url):
            if server.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {server.returncode} before it was ready (the log above says why)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver was not ready within {READY_TIMEOUT_S} s")
            run.check_cancel()
            time.sleep(0.5)
        run.publish({"endpoint": endpoint})
        run.progress(3, 3, f"serving '{row.name}' at {url} (gRPC {endpoint['grpc']})", force=True)
        print(f"Triton ready: HTTP {url}, gRPC {endpoint['grpc']}", flush=True)
        while not run.stop.is_set():
            if server.poll() is not None:
                raise RuntimeError(f"tritonserver exited on its own with code {server.returncode} (the log above says why)")
            run.stop.wait(1.0)
    finally:
        _stop(server)
    raise Cancelled("stopped", result={"endpoint": endpoint})


def _graph_of(export_dir: Path) -> str:
    """The graph file the exported decoder config names."""
    for line in (export_dir / DECODER / "config.pbtxt").read_text().splitlines():
        if line.startswith("default_model_filename:"):
            return line.split('"')[1]
    return "model.onnx"


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM (Triton unloads its models, at most EXIT_TIMEOUT_S), then SIGKILL: a
    client's open gRPC stream can hold it."""
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        print(f"tritonserver did not stop within {STOP_GRACE_S} s (an open client stream?): killing it", flush=True)
        server.kill()
        server.wait(10)


# --- a client, for the page's test box ----------------------------------------------------------


def send_triton_request(endpoint: dict[str, Any], text: str, max_tokens: int = 32) -> dict[str, Any]:
    """Stream one generation through HTTP generate_stream: {"pieces", "text", "seconds"};
    ValueError with Triton's message."""
    body = json.dumps({"text_input": text, "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(endpoint["generate_stream"], data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    pieces: list[str] = []
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    raise ValueError(f"Triton: {event['error']}")
                pieces.append(event["text_output"])
    except urllib.error.HTTPError as exc:
        raise ValueError(f"Triton answered {exc.code}: {exc.read().decode('utf-8', 'replace')[:300]}") from None
    except OSError as exc:
        raise ValueError(f"Triton did not answer: {exc}") from None
    return {"pieces": pieces, "text": "".join(pieces), "seconds": time.perf_counter() - start}
