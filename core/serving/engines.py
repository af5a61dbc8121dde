"""The engines behind the server: one loaded model each, turning a prompt's token
ids into new token ids as they are made, and those into text.

`TorchEngine` serves a registered model or adapter with transformers' continuous
batching: one background thread steps every request in flight together, and a
request joins or leaves the batch between steps (so 8 clients share one forward
pass instead of waiting in line). Sampling settings are per request
(`_cheap_sampling`: greedy keeps the argmax). The manager has one
random generator, so a request with a `seed` is generated alone with
`model.generate` while the batch waits (`manager.pause()`): reproducible, at the
cost of holding the others for its length.

`OnnxEngine` serves an ONNX export (core/export/onnx.py: one decoder graph with
its KV cache) with onnxruntime, batched the same way on its own thread: a new
request is prefilled alone, then joins the decoding batch (its cache padded on
the left to the batch's length, masked out); a finished one leaves it. Each
request samples with its own generator, so a seed needs no pause.

`Generation` is what a request handler reads: the text pieces (stop strings cut
on the text, a half-made multi-byte character held back), the token counts and
why it ended. Leaving its loop early (a stop string, a client gone) cancels the
request in the engine.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

import numpy as np

from core.inference import generate

PAGE_TOKENS = 16
"""Tokens per page of the paged KV cache."""


class EngineError(RuntimeError):
    """The engine failed a request (its generation thread died, or the model raised)."""


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    """0: greedy."""
    top_p: float = 1.0
    seed: Optional[int] = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Step:
    tokens: list[int]
    """New token ids since the last step."""
    finished: bool


def _cheap_sampling():
    """The manager's per-request sampling, as cheap as plain greedy decoding when
    every request in the batch is greedy. The manager itself picks the argmax
    (do_sample off); these processors get there first for the requests that sample:
    temperature, top-p (a sort only when some request asks for top-p < 1), then a
    draw from the softmax that leaves one token standing in that request's row.
    A batch of greedy requests skips all three with one check each. (transformers'
    own per-request top-k and top-p sort the whole vocabulary for every request at
    every step: a quarter of the starter's throughput at 8 clients.)"""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor, ContinuousBatchingLogitsProcessorList, ContinuousBatchingTopPLogitsWarper,
    )
    from transformers.generation.logits_process import LogitsProcessorList, TopPLogitsWarper

    def temperatures(requests) -> "torch.Tensor":
        values = [r.state.logit_processor_kwargs.get("temperature", 1.0) for r in requests]
        return torch.tensor(values, dtype=torch.float32).view(dtype=torch.int32)

    class Temperature(ContinuousBatchingLogitsProcessor):
        supported_kwargs = {"temperature": float}
        ignored_kwargs = ()

        def fill_defaults(self, int32_tensor):
            int32_tensor.zero_()  # 0.0: greedy

        def prepare_tensor_args(self, requests_with_new_token):
            return temperatures(requests_with_new_token)

        def __call__(self, scores, tensor_arg):
            t = tensor_arg[: scores.size(0)].view(dtype=torch.float32).unsqueeze(-1)
            if not bool((t > 0).any()):
                return scores
            return scores / torch.where(t > 0, t, torch.ones_like(t))

    class TopP(ContinuousBatchingTopPLogitsWarper):
        def __call__(self, scores, tensor_arg):
            if bool((tensor_arg[: scores.size(0)].view(dtype=torch.float32) >= 1).all()):
                return scores
            return super().__call__(scores, tensor_arg)

    class Draw(ContinuousBatchingLogitsProcessor):
        supported_kwargs = {}
        ignored_kwargs = ()

        def fill_defaults(self, int32_tensor):
            int32_tensor.zero_()

        def prepare_tensor_args(self, requests_with_new_token):
            return temperatures(requests_with_new_token)

        def __call__(self, scores, tensor_arg):
            sampled = (tensor_arg[: scores.size(0)].view(dtype=torch.float32) > 0).nonzero().squeeze(-1)
            if sampled.numel() == 0:
                return scores
            drawn = torch.multinomial(torch.softmax(scores[sampled], dim=-1), num_samples=1)
            rows = torch.full_like(scores[sampled], float("-inf")).scatter_(1, drawn, 0.0)
            return scores.index_copy(0, sampled, rows)

    processors = ContinuousBatchingLogitsProcessorList(
        LogitsProcessorList([Temperature(), TopP(TopPLogitsWarper(1.0)), Draw()])
    )
    processors.tensors_required = 3
    return processors


class TorchEngine:
    """A registered model (an adapter on its base) under a continuous-batching manager."""

    backend = "torch"

    def __init__(self, row, *, cache_tokens: int, batch_tokens: int):
        import torch
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.name = row.name
        self.model, self.tokenizer = generate.load(row)
        self.created = int(row.created_at.timestamp()) if row.created_at else int(time.time())
        self.eos = generate.eos_ids(self.model, self.tokenizer)
        self.context = generate.context_length(self.model)
        pages = max(1, -(-cache_tokens // PAGE_TOKENS))
        self.capacity = pages * PAGE_TOKENS
        """Tokens one request may hold in the cache (prompt + reply): more stops the manager's thread."""
        # every request sends its own temperature (0: greedy) and top-p; the manager takes the argmax of what
        # _cheap_sampling leaves (one token standing in each sampled row)
        config = GenerationConfig(do_sample=False, max_new_tokens=16, eos_token_id=self.eos or -1, pad_token_id=self._pad())
        self.manager = self.model.init_continuous_batching(
            generation_config=config,
            continuous_batching_config=ContinuousBatchingConfig(
                num_blocks=pages, page_size=PAGE_TOKENS, max_batch_tokens=batch_tokens,
            ),
        )
        self.manager.logit_processor = _cheap_sampling()
        with torch.inference_mode():
            self.manager.start()
        self._seeded = threading.Lock()

    def _pad(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.eos[0] if self.eos else 0)

    @property
    def running(self) -> bool:
        return self.manager.is_running()

    def close(self) -> None:
        if self.manager.is_running():
            self.manager.stop(block=True, timeout=10, hard_stop=True)

    async def steps(self, prompt: list[int], sampling: Sampling) -> AsyncIterator[Step]:
        """New tokens as the manager makes them; closing the iterator cancels the request."""
        if sampling.seed is not None and not sampling.greedy:
            async for step in self._seeded_steps(prompt, sampling):
                yield step
            return
        if not self.manager.is_running():
            raise EngineError("the generation thread has stopped; restart the server")
        kwargs: dict[str, Any] = dict(temperature=float(sampling.temperature), top_p=float(sampling.top_p))
        rid = uuid.uuid4().hex
        outputs: asyncio.Queue = asyncio.Queue()
        self.manager.register_result_handler(rid, outputs.put_nowait)  # before add_request: no output is missed
        self.manager.add_request(
            prompt, request_id=rid, max_new_tokens=sampling.max_tokens, streaming=True, eos_token_id=self.eos or -1, **kwargs
        )
        seen, finished = 0, False
        try:
            while not finished:
                try:
                    out = await asyncio.wait_for(outputs.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if not self.manager.is_running():
                        raise EngineError("the generation thread stopped while this request was in flight") from None
                    continue
                if out.error:
                    raise EngineError(str(out.error))
                tokens = list(out.generated_tokens)
                finished = out.is_finished()
                yield Step(tokens[seen:], finished)
                seen = len(tokens)
        finally:
            if not finished:
                self.manager.cancel_request(rid)
                with self.manager.output_router._lock:  # a cancelled request gets no last output to clean up after it
                    self.manager.output_router.result_handlers.pop(rid, None)

    async def _seeded_steps(self, prompt: list[int], sampling: Sampling) -> AsyncIterator[Step]:
        """A seeded sample: model.generate alone (the batch paused), tokens handed over as they come."""
        import torch
        from transformers import StoppingCriteriaList, set_seed

        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue = asyncio.Queue()
        halt = threading.Event()

        class Streamer:
            prompt_seen = False

            def put(self, value) -> None:
                if not self.prompt_seen:  # generate() first sends the prompt
                    self.prompt_seen = True
                    return
                loop.call_soon_threadsafe(tokens.put_nowait, value.reshape(-1).tolist())

            def end(self) -> None:
                loop.call_soon_threadsafe(tokens.put_nowait, None)

        errors: list[BaseException] = []

        def work() -> None:
            try:
                with self._seeded, self.manager.pause(), torch.inference_mode():
                    set_seed(sampling.seed)
                    ids = torch.tensor([prompt], device=self.model.device)
                    self.model.generate(
                        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                        temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                        max_new_tokens=sampling.max_tokens, eos_token_id=self.eos or None, pad_token_id=self._pad(),
                        streamer=Streamer(), stopping_criteria=StoppingCriteriaList([generate._halt_when(halt)]),
                    )
            except BaseException as exc:  # reported to the reader
                errors.append(exc)
                loop.call_soon_threadsafe(tokens.put_nowait, None)

        thread = threading.Thread(target=work, daemon=True, name="seeded-generate")
        thread.start()
        made = 0
        try:
            while (new := await tokens.get()) is not None:
                made += len(new)
                yield Step(new, made >= sampling.max_tokens or bool(self.eos and new[-1] in self.eos))
            if errors:
                raise EngineError(f"{type(errors[0]).__name__}: {errors[0]}")
        finally:
            halt.set()  # a reader that left: generate() ends at its next token


# --- ONNX Runtime -------------------------------------------------------------------------------


@dataclass
class _Row:
    """A request in the ONNX engine: its reply so far and how to hand over new tokens."""

    prompt: list[int]
    sampling: Sampling
    deliver: Callable[[Any], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    rng: Any = None
    length: int = 0
    """Real tokens in its cache (its next position)."""
    made: int = 0
    last: int = 0
    done: bool = False


def pick(logits: np.ndarray, sampling: Sampling, rng) -> int:
    """The next token from one row of logits: the argmax, or a sample at the
    request's temperature within its top-p nucleus."""
    if sampling.greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / sampling.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if sampling.top_p < 1:
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), sampling.top_p)) + 1]
        nucleus = np.zeros_like(p)
        nucleus[keep] = p[keep]
        p = nucleus / nucleus.sum()
    return int(rng.choice(len(p), p=p))


class OnnxEngine:
    """An ONNX export's decoder graph in onnxruntime, batching the requests in flight."""

    backend = "onnx"

    def __init__(self, name: str, folder: Path, graph: str, facts: dict[str, Any], *, created: int,
                 threads: Optional[int] = None):
        from transformers import AutoTokenizer

        from core.export.onnx import OrtDecoder

        self.name, self.created, self.graph = name, created, graph
        self.decoder = OrtDecoder(folder / graph, threads=threads)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.eos = list(facts.get("eos_token_ids") or [])
        self.context = facts.get("context_length")
        self.capacity = self.context or 1 << 30
        self._inbox: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"onnx-{name}")
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout=10)

    async def steps(self, prompt: list[int], sampling: Sampling) -> AsyncIterator[Step]:
        if not self.running:
            raise EngineError("the generation thread has stopped; restart the server")
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()
        row = _Row(prompt, sampling, lambda item: loop.call_soon_threadsafe(out.put_nowait, item),
                   rng=np.random.default_rng(sampling.seed))
        self._inbox.put(row)
        finished = False
        try:
            while not finished:
                item = await out.get()
                if isinstance(item, BaseException):
                    raise EngineError(f"{type(item).__name__}: {item}")
                yield item
                finished = item.finished
        finally:
            row.cancelled.set()  # the engine drops it before its next step

    # --- the engine's thread ---

    def _loop(self) -> None:
        batch: list[_Row] = []
        past: list[np.ndarray] = []
        mask = np.zeros((0, 0), dtype=np.int64)
        while not self._stop.is_set():
            arrivals = []
            try:
                arrivals.append(self._inbox.get(timeout=None if not batch else 0))
                while True:
                    arrivals.append(self._inbox.get_nowait())
            except queue.Empty:
                pass
            for row in arrivals:
                if row is None or row.cancelled.is_set():
                    continue
                try:
                    row_past, row_mask = self._prefill(row)
                except Exception as exc:  # this request's failure, not the engine's
                    row.deliver(exc)
                    continue
                if not row.done:
                    batch, past, mask = self._join(batch, past, mask, row, row_past, row_mask)
            batch, past, mask = self._leave(batch, past, mask)
            if not batch:
                continue
            try:
                past, mask = self._decode(batch, past, mask)
            except Exception as exc:
                for row in batch:
                    row.deliver(exc)
                batch, past, mask = [], [], np.zeros((0, 0), dtype=np.int64)

    def _emit(self, row: _Row, token: int) -> None:
        row.made += 1
        row.last = token
        row.done = row.made >= row.sampling.max_tokens or token in self.eos
        row.deliver(Step([token], row.done))

    def _prefill(self, row: _Row) -> tuple[list[np.ndarray], np.ndarray]:
        n = len(row.prompt)
        ids = np.array([row.prompt], dtype=np.int64)
        mask = np.ones((1, n), dtype=np.int64)
        logits, present = self.decoder(ids, mask, np.arange(n, dtype=np.int64)[None, :], self.decoder.empty_past(1))
        row.length = n
        self._emit(row, pick(logits[0, -1], row.sampling, row.rng))
        return present, mask

    @staticmethod
    def _join(batch, past, mask, row, row_past, row_mask):
        """Add a prefilled request to the batch: the shorter caches padded on the left (masked out)."""
        if not batch:
            return [row], row_past, row_mask
        length = max(mask.shape[1], row_mask.shape[1])

        def left(a: np.ndarray, width: int, axis: int) -> np.ndarray:
            if a.shape[axis] == width:
                return a
            shape = list(a.shape)
            shape[axis] = width - a.shape[axis]
            return np.concatenate([np.zeros(shape, dtype=a.dtype), a], axis=axis)

        past = [np.concatenate([left(p, length, 2), left(q, length, 2)], axis=0) for p, q in zip(past, row_past)]
        mask = np.concatenate([left(mask, length, 1), left(row_mask, length, 1)], axis=0)
        return batch + [row], past, mask

    @staticmethod
    def _leave(batch, past, mask):
        """Drop finished and cancelled requests, and cache columns no one uses any more."""
        keep = [i for i, row in enumerate(batch) if not row.done and not row.cancelled.is_set()]
        if len(keep) == len(batch):
            return batch, past, mask
        if not keep:
            return [], [], np.zeros((0, 0), dtype=np.int64)
        mask = mask[keep]
        used = int(np.argmax(mask.any(axis=0)))  # leading columns that are padding in every row
        return [batch[i] for i in keep], [p[keep][:, :, used:] for p in past], mask[:, used:]

    def _decode(self, batch, past, mask):
        """One step for the whole batch: each request's last token in, its next one out."""
        ids = np.array([[row.last] for row in batch], dtype=np.int64)
        positions = np.array([[row.length] for row in batch], dtype=np.int64)
        mask = np.concatenate([mask, np.ones((len(batch), 1), dtype=np.int64)], axis=1)
        logits, present = self.decoder(ids, mask, positions, past)
        for i, row in enumerate(batch):
            row.length += 1
            if not row.cancelled.is_set():
                self._emit(row, pick(logits[i, -1], row.sampling, row.rng))
        return present, mask


class _Detokenizer:
    """New token ids -> the text they add, in time linear in the reply: the Rust
    tokenizer's stream decoder holds a half-made multi-byte character back until its
    last byte comes (as `transformers serve` streams). A tokenizer without a Rust
    backend decodes the whole reply each step instead."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        if self.backend is not None:
            from tokenizers.decoders import DecodeStream

            self.stream = DecodeStream(skip_special_tokens=True)
        self.ids: list[int] = []
        self.text = ""

    def step(self, new: list[int]) -> str:
        self.ids += new
        if self.backend is not None:
            piece = "".join(p for t in new if (p := self.stream.step(self.backend, t)) is not None)
        else:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            piece = "" if text.endswith("\ufffd") else text[len(self.text):]  # half a character: wait
        self.text += piece
        return piece

    def finish(self) -> str:
        """What is still held back at the end (bytes that never made a character)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        piece = text[len(self.text):] if text.startswith(self.text) else ""
        self.text += piece
        return piece


@dataclass
class Generation:
    """One request's reply: text pieces from an engine's token steps."""

    engine: Any
    prompt: list[int]
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str = "length"
    first_token_s: Optional[float] = None
    """Seconds from the start to the first new token."""

    async def pieces(self) -> AsyncIterator[str]:
        """The reply's text, piece by piece, never showing a stop string or any part of one."""
        eos = set(self.engine.eos)
        detokenizer = _Detokenizer(self.engine.tokenizer)
        start = time.perf_counter()
        full = shown = ""
        steps = self.engine.steps(self.prompt, self.sampling)
        try:
            async for step in steps:
                if step.tokens and self.first_token_s is None:
                    self.first_token_s = time.perf_counter() - start
                self.completion_tokens += len(step.tokens)
                if any(t in eos for t in step.tokens):
                    self.finish_reason = "stop"
                full += detokenizer.step([t for t in step.tokens if t not in eos])
                if step.finished:
                    full += detokenizer.finish()
                text, stopped = generate.visible_text(full, self.stop) if self.stop else (full, False)
                if step.finished and not stopped:
                    text = full  # the end: nothing is held back any more
                if len(text) > len(shown):
                    yield text[len(shown):]
                    shown = text
                if stopped:
                    self.finish_reason = "stop"
                    return
        finally:
            await steps.aclose()  # a stop string or a reader gone: the engine drops the request

    async def text(self) -> str:
        return "".join([piece async for piece in self.pieces()])
