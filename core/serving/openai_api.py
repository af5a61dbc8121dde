"""The OpenAI-compatible HTTP API (FastAPI): what `python -m core serve` listens with.

    GET  /v1/models                  the served models
    POST /v1/completions             text in, text out
    POST /v1/chat/completions        messages in (the model's chat template), a message out
    GET  /health                     200 when the models are loaded, 503 while loading
    GET  /metrics                    Prometheus: requests, tokens, time to first token, in flight

`stream: true` answers as server-sent events in OpenAI's chunk format, ending
with `data: [DONE]`; `stream_options.include_usage` adds a last chunk with the
token counts. Errors have OpenAI's shape, `{"error": {"message", "type",
"param", "code"}}`: unknown model 404, a bad request 400 (the field named in
`param`), a wrong or missing key 401, a body over the limit 413, the models
still loading 503. A parameter this server does not honour (`n` > 1, tools,
logprobs, ...) is refused with a 400 that names it, never silently ignored.

Generation runs off the event loop (the engine's thread); a client that goes
away mid-request cancels its generation.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.serving.engines import EngineError, Generation, Sampling

# Request fields OpenAI defines that this server does not honour: refused by name.
UNSUPPORTED = {
    "tools": "tool calls", "tool_choice": "tool calls", "functions": "function calls",
    "function_call": "function calls", "parallel_tool_calls": "tool calls", "logprobs": "log probabilities",
    "top_logprobs": "log probabilities", "logit_bias": "logit bias", "best_of": "best_of",
    "echo": "echo", "suffix": "suffix", "audio": "audio", "modalities": "other modalities",
    "prediction": "predicted outputs", "response_format": "structured output", "web_search_options": "web search",
    "reasoning_effort": "reasoning settings",
}
IGNORED = {"user", "metadata", "store", "service_tier"}
"""Bookkeeping fields with no effect on the reply: accepted."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --- requests ------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)

    def check(self) -> None:
        """Refuse what this server would otherwise have to ignore."""
        if self.n != 1:
            raise ApiError(400, f"n={self.n}: this server returns one choice per request; send n requests "
                           "(they are batched together)", param="n", code="unsupported_parameter")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ApiError(400, f"{name} is not supported by this server (leave it at 0)", param=name,
                               code="unsupported_parameter")
        for name, value in (self.model_extra or {}).items():
            if name in IGNORED:
                continue
            if name in UNSUPPORTED:
                if value in (None, False, [], {}) or (name == "response_format" and value == {"type": "text"}):
                    continue  # the default, sent explicitly
                raise ApiError(400, f"{name} ({UNSUPPORTED[name]}) is not supported by this server", param=name,
                               code="unsupported_parameter")
            raise ApiError(400, f"unrecognized request argument: {name}", param=name, code="unknown_parameter")
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options")

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, f"stop: at most 4 stop strings ({len(stops)} given)", param="stop")
        return [s for s in stops if s]


class CompletionRequest(_Request):
    prompt: Union[str, list[str]]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) == 1:
            return self.prompt[0]
        raise ApiError(400, f"prompt: one prompt per request ({len(self.prompt)} given); send one request each "
                       "(they are batched together)", param="prompt", code="unsupported_parameter")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, and the like
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[dict[str, Any]], None] = None

    def plain(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") != "text":
                    raise ApiError(400, f"messages: a {part.get('type')!r} part; this server reads text only",
                                   param="messages", code="unsupported_parameter")
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


# --- the server's state ----------------------------------------------------------------------


@dataclass
class Limits:
    max_tokens: int = 1024
    """The most new tokens one request may ask for."""
    max_body_bytes: int = 1 << 20


@dataclass
class State:
    """What the app serves: the engines by name (filled while it already listens)."""

    api_key: str = ""
    limits: Limits = field(default_factory=Limits)
    engines: dict[str, Any] = field(default_factory=dict)
    loading: list[str] = field(default_factory=list)
    """Names still loading: /health is 503 until this is empty."""
    error: str = ""
    """Why loading failed (the job fails with it too)."""


class Metrics:
    """The Prometheus series, on their own registry (one server per process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no `_created` twin of every series

        self.registry = CollectorRegistry()
        self.requests = Counter("llmdev_requests", "Requests answered, by model, endpoint and HTTP status",
                                ["model", "endpoint", "status"], registry=self.registry)
        self.prompt_tokens = Counter("llmdev_prompt_tokens", "Prompt tokens read", ["model"], registry=self.registry)
        self.completion_tokens = Counter("llmdev_completion_tokens", "Tokens generated", ["model"], registry=self.registry)
        self.first_token = Histogram("llmdev_time_to_first_token_seconds", "Seconds from request to first new token",
                                     ["model"], registry=self.registry,
                                     buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
        self.duration = Histogram("llmdev_request_seconds", "Seconds from request to last token", ["model"],
                                  registry=self.registry, buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
        self.in_flight = Gauge("llmdev_requests_in_flight", "Requests being generated now", ["model"],
                               registry=self.registry)
        self.disconnected = Counter("llmdev_requests_disconnected", "Requests whose client left before the end "
                                    "(their generation stopped)", ["model"], registry=self.registry)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# --- the app ----------------------------------------------------------------------------------


def create_app(state: State) -> FastAPI:
    app = FastAPI(title="LLM Development Platform: OpenAI-compatible API", docs_url="/docs", redoc_url=None)
    metrics = Metrics()
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import traceback

        traceback.print_exception(exc)  # into the job's log
        return JSONResponse(ApiError(500, f"the server failed: {type(exc).__name__}: {exc}", type_="server_error").body(),
                            status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), code=None).body(), status_code=exc.status_code)

    def authorise(request: Request) -> None:
        if not state.api_key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
            raise ApiError(401, "Incorrect or missing API key: send Authorization: Bearer <key>",
                           code="invalid_api_key")

    def engine_for(name: str):
        if name in state.engines:
            return state.engines[name]
        if name in state.loading:
            raise ApiError(503, f"model {name!r} is still loading; GET /health says when it is ready",
                           type_="server_error", code="model_loading")
        served = ", ".join(sorted(state.engines)) or "none yet"
        raise ApiError(404, f"The model {name!r} does not exist on this server (served: {served})", param="model",
                       code="model_not_found")

    async def read(request: Request, cls: type[_Request]) -> _Request:
        length = request.headers.get("content-length")
        limit = state.limits.max_body_bytes
        if length and length.isdigit() and int(length) > limit:
            raise ApiError(413, f"the request body is {int(length):,} bytes; this server takes at most {limit:,}",
                           code="request_too_large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"the request body is over {limit:,} bytes, the most this server takes",
                               code="request_too_large")
        try:
            data = json.loads(body or b"null")
        except ValueError as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object")
        try:
            parsed = cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ApiError(400, f"{where}: {first['msg']}", param=where or None) from None
        parsed.check()
        return parsed

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.error:
            return JSONResponse({"status": "error", "error": state.error}, status_code=503)
        if state.loading:
            return JSONResponse({"status": "loading", "loading": state.loading, "ready": sorted(state.engines)},
                                status_code=503)
        broken = [name for name, e in state.engines.items() if not e.running]
        if broken:
            return JSONResponse({"status": "error", "error": f"generation stopped for {', '.join(broken)}"},
                                status_code=503)
        return JSONResponse({"status": "ok", "models": sorted(state.engines)})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        authorise(request)
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    def model_card(name: str) -> dict[str, Any]:
        engine = state.engines[name]
        return {"id": name, "object": "model", "created": engine.created, "owned_by": "llmdev",
                "backend": engine.backend, "context_length": engine.context}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        authorise(request)
        return {"object": "list", "data": [model_card(n) for n in sorted(state.engines)]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        authorise(request)
        engine_for(name)
        return model_card(name)

    def plan(req: _Request, engine, prompt: list[int]) -> Generation:
        """The generation a request asks for, within the model's context and the server's limits."""
        limit = state.limits.max_tokens
        asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
        room = min(engine.context or engine.capacity, engine.capacity) - len(prompt)
        if room < 1:
            raise ApiError(400, f"the prompt is {len(prompt)} tokens; model {req.model!r} reads at most "
                           f"{min(engine.context or engine.capacity, engine.capacity)} (prompt and reply together)",
                           param="messages" if isinstance(req, ChatRequest) else "prompt",
                           code="context_length_exceeded")
        if asked is not None and asked > limit:
            raise ApiError(400, f"max_tokens={asked} is more than this server allows ({limit})", param="max_tokens")
        if asked is not None and asked > room:
            raise ApiError(400, f"the prompt is {len(prompt)} tokens and max_tokens={asked}: model {req.model!r} "
                           f"has room for {room} new tokens", param="max_tokens", code="context_length_exceeded")
        sampling = Sampling(max_tokens=asked or min(limit, room), temperature=req.temperature, top_p=req.top_p,
                            seed=req.seed)
        return Generation(engine, prompt, sampling, stop=req.stops())

    async def answer(request: Request, req: _Request, endpoint: str, prompt_text: str, special: bool):
        engine = engine_for(req.model)
        prompt = await asyncio.to_thread(
            lambda: engine.tokenizer(prompt_text, add_special_tokens=special)["input_ids"]
        )
        gen = plan(req, engine, prompt)
        chat = endpoint == "chat"
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        metrics.prompt_tokens.labels(req.model).inc(len(prompt))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _events(gen, request, rid, created, req.model, chat, include_usage, endpoint),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text = await _until_disconnect(request, gen, req.model, endpoint)
        usage = _usage(gen)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": gen.finish_reason}
            return {"id": rid, "object": "chat.completion", "created": created, "model": req.model,
                    "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": gen.finish_reason}
        return {"id": rid, "object": "text_completion", "created": created, "model": req.model,
                "choices": [choice], "usage": usage}

    class _Watch:
        """Counts a request in flight, then its tokens, duration and status."""

        def __init__(self, model: str, endpoint: str):
            self.model, self.endpoint, self.start = model, endpoint, time.perf_counter()

        def __enter__(self):
            metrics.in_flight.labels(self.model).inc()
            return self

        def __exit__(self, kind, exc, tb):
            metrics.in_flight.labels(self.model).dec()
            return False

        def done(self, gen: Generation, status: str) -> None:
            metrics.requests.labels(self.model, self.endpoint, status).inc()
            metrics.completion_tokens.labels(self.model).inc(gen.completion_tokens)
            if gen.first_token_s is not None:
                metrics.first_token.labels(self.model).observe(gen.first_token_s)
            metrics.duration.labels(self.model).observe(time.perf_counter() - self.start)

    async def _until_disconnect(request: Request, gen: Generation, model: str, endpoint: str) -> str:
        """The whole reply, or a cancelled generation if the client leaves first."""
        with _Watch(model, endpoint) as watch:
            task = asyncio.create_task(gen.text())
            try:
                while True:
                    done, _ = await asyncio.wait({task}, timeout=0.5)
                    if done:
                        break
                    if await request.is_disconnected():
                        task.cancel()
                        metrics.disconnected.labels(model).inc()
                        watch.done(gen, "499")
                        raise ApiError(499, "the client closed the request")
                text = task.result()
            except EngineError as exc:
                watch.done(gen, "500")
                raise ApiError(500, f"generation failed: {exc}", type_="server_error") from None
            finally:
                if not task.done():
                    task.cancel()
            watch.done(gen, "200")
            return text

    async def _events(gen: Generation, request: Request, rid: str, created: int, model: str, chat: bool,
                      include_usage: bool, endpoint: str) -> AsyncIterator[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece: Optional[str], finish: Optional[str], *, first: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                    {"content": piece} if piece is not None else {})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
            body: dict[str, Any] = {"id": rid, "object": kind, "created": created, "model": model, "choices": [choice]}
            if include_usage:
                body["usage"] = None
            return _sse(body)

        with _Watch(model, endpoint) as watch:
            status = "499"
            try:
                if chat:
                    yield chunk(None, None, first=True)
                async for piece in gen.pieces():
                    yield chunk(piece, None)
                yield chunk(None, gen.finish_reason)
                if include_usage:
                    yield _sse({"id": rid, "object": kind, "created": created, "model": model, "choices": [],
                                "usage": _usage(gen)})
                yield b"data: [DONE]\n\n"
                status = "200"
            except EngineError as exc:
                status = "500"
                yield _sse(ApiError(500, f"generation failed: {exc}", type_="server_error").body())
            finally:
                if status == "499":
                    metrics.disconnected.labels(model).inc()
                watch.done(gen, status)

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorise(request)
        req = await read(request, CompletionRequest)
        return await answer(request, req, "completions", req.text(), special=True)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorise(request)
        req = await read(request, ChatRequest)
        engine = engine_for(req.model)
        from core.inference.generate import prompt_text

        text = prompt_text(engine.tokenizer, [m.plain() for m in req.messages])
        return await answer(request, req, "chat", text, special=False)

    return app


def _usage(gen: Generation) -> dict[str, int]:
    prompt = len(gen.prompt)
    return {"prompt_tokens": prompt, "completion_tokens": gen.completion_tokens,
            "total_tokens": prompt + gen.completion_tokens}


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
