"""Text generation with streaming: what the playground and `python -m core generate` use.

    python -m core generate --model NAME [--max-new-tokens N] [--temperature T] [--seed S] PROMPT

transformers samples (`model.generate` on a worker thread, so every setting
means what it means there); a streamer hands over each new token and this
module detokenises incrementally, so text arrives token by token (unlike
TextIteratorStreamer, which holds text back until a word ends).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from core import models
from storage.db import data_home


@dataclass
class Settings:
    max_new_tokens: int = 128
    temperature: float = 0.7
    """0 = greedy."""
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 32768:
            raise ValueError(f"max_new_tokens: {self.max_new_tokens} is out of range (1 to 32768)")
        if self.temperature < 0:
            raise ValueError(f"temperature: {self.temperature} must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: {self.top_p} must be in (0, 1]")


@dataclass
class Stats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def usable(row) -> Optional[str]:
    """Why a model cannot be used for generation right now (None when it can)."""
    if row.status != "available":
        return f"'{row.name}' is {models.display_status(row)}"
    folder = data_home() / (row.path or "")
    needed = "adapter_config.json" if row.source == "adapter" else "config.json"
    if not row.path or not (folder / needed).is_file():
        return f"'{row.name}' is missing files ({folder / needed})"
    return None


def load(row):
    """(model, tokenizer) for a registered model; an adapter is put on its base."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    why = usable(row)
    if why:
        raise ValueError(why)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = data_home() / row.path
    if row.source == "adapter":
        from peft import PeftModel

        base = models.get(row.parent_id)
        model = AutoModelForCausalLM.from_pretrained(data_home() / base.path, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.to(device).eval(), tokenizer


def prompt_text(tokenizer, messages: list[dict[str, str]], raw: bool = False) -> str:
    """The text the model continues: its chat template, or the plain text in raw mode
    (base models without a template)."""
    if raw or not tokenizer.chat_template:
        return "\n".join(m["content"] for m in messages if m["role"] != "system" or raw)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class _TokenQueue:
    """A transformers streamer: receives token ids as generate() produces them."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first sends the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.q.put(token)

    def end(self) -> None:
        self.q.put(None)


def stream(model, tokenizer, text: str, settings: Settings, stats: Optional[Stats] = None) -> Iterator[str]:
    """Yield the continuation of `text` piece by piece as it is generated."""
    import torch
    from transformers import set_seed

    stats = stats if stats is not None else Stats()
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    stats.prompt_tokens = int(inputs["input_ids"].shape[1])
    kwargs: dict[str, Any] = dict(
        max_new_tokens=settings.max_new_tokens,
        repetition_penalty=settings.repetition_penalty,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if settings.stop:
        kwargs.update(stop_strings=settings.stop, tokenizer=tokenizer)
    streamer = _TokenQueue()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            if settings.seed is not None:
                set_seed(settings.seed)
            with torch.no_grad():
                model.generate(**inputs, streamer=streamer, **kwargs)
        except BaseException as exc:  # reported to the consumer
            errors.append(exc)
        finally:
            streamer.end()

    start = time.perf_counter()
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    ids: list[int] = []
    shown = ""
    eos = set(_eos_ids(model, tokenizer))
    try:
        while (token := streamer.q.get()) is not None:
            if token in eos:
                continue
            ids.append(token)
            stats.new_tokens = len(ids)
            stats.seconds = time.perf_counter() - start
            full = tokenizer.decode(ids, skip_special_tokens=True)
            if full.endswith("\ufffd"):
                continue  # half of a multi-byte character: wait for the rest
            if len(full) > len(shown):
                yield full[len(shown):]
                shown = full
    finally:
        thread.join()
    stats.seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    full = tokenizer.decode(ids, skip_special_tokens=True)
    if len(full) > len(shown):
        yield full[len(shown):]


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return [i for i in ids + [tokenizer.eos_token_id] if i is not None]
