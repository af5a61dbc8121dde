"""The engines behind the server: one loaded model each, turning a prompt's token
ids into new token ids as they are made, and those into text.

`TorchEngine` serves a registered model or adapter with transformers' continuous
batching: one background thread steps every request in flight together, and a
request joins or leaves the batch between steps (so 8 clients share one forward
pass instead of waiting in line). Sampling settings are per request (the
manager's per-request processors; greedy is top_k=1). The manager has one
random generator, so a request with a `seed` is generated alone with
`model.generate` while the batch waits (`manager.pause()`): reproducible, at the
cost of holding the others for its length.

`Generation` is what a request handler reads: the text pieces (stop strings cut
on the text, a half-made multi-byte character held back), the token counts and
why it ended. Leaving its loop early (a stop string, a client gone) cancels the
request in the engine.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

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
        self.vocab = int(self.model.config.get_text_config().vocab_size)
        pages = max(1, -(-cache_tokens // PAGE_TOKENS))
        self.capacity = pages * PAGE_TOKENS
        """Tokens one request may hold in the cache (prompt + reply): more stops the manager's thread."""
        # Sampling settings given here only make the manager build the per-request
        # processors (temperature, top-k, top-p); every request sends its own.
        config = GenerationConfig(
            do_sample=True, temperature=0.5, top_k=self.vocab, top_p=0.5, max_new_tokens=16,
            eos_token_id=self.eos or -1, pad_token_id=self._pad(),
        )
        self.manager = self.model.init_continuous_batching(
            generation_config=config,
            continuous_batching_config=ContinuousBatchingConfig(
                num_blocks=pages, page_size=PAGE_TOKENS, max_batch_tokens=batch_tokens, per_request_processors=True,
            ),
        )
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
        if sampling.greedy:  # the argmax, through the sampler: top_k=1 leaves one token to draw
            kwargs: dict[str, Any] = dict(temperature=1.0, top_k=1, top_p=1.0)
        else:
            kwargs = dict(temperature=float(sampling.temperature), top_k=self.vocab, top_p=float(sampling.top_p))
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
        tokenizer, eos = self.engine.tokenizer, set(self.engine.eos)
        start = time.perf_counter()
        ids: list[int] = []
        shown = ""
        steps = self.engine.steps(self.prompt, self.sampling)
        try:
            async for step in steps:
                if step.tokens and self.first_token_s is None:
                    self.first_token_s = time.perf_counter() - start
                self.completion_tokens += len(step.tokens)
                if any(t in eos for t in step.tokens):
                    self.finish_reason = "stop"
                ids += [t for t in step.tokens if t not in eos]
                full = tokenizer.decode(ids, skip_special_tokens=True)
                if full.endswith("\ufffd") and not step.finished:
                    continue  # half of a multi-byte character: wait for the rest
                text, stopped = generate.visible_text(full, self.stop)
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
