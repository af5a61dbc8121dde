"""Text generation with streaming: what the playground and `python -m core generate` use.

    python -m core generate --model NAME [--max-new-tokens N] [--temperature T] [--seed S] PROMPT

transformers samples (`model.generate` on a worker thread, so every setting
means what it means there); a streamer hands over each new token and this
module detokenises incrementally, so text arrives token by token (unlike
TextIteratorStreamer, which holds text back until a word ends).

Stop strings are cut here, on the text: the stream ends just before the first
stop string and never shows any part of it (a tail that could be the start of
one is held back until it is not). Closing the stream early (a rerun, a Stop
button, a client that goes away) stops generate() at its next token.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from core.models import registry as models
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
    """The reply ends just before the first of these (empty strings are ignored)."""
    seed: Optional[int] = 0
    """None = a different sample every time."""

    def __post_init__(self) -> None:
        self.stop = [s for s in self.stop if s]
        if not 1 <= self.max_new_tokens <= 32768:
            raise ValueError(f"max_new_tokens: {self.max_new_tokens} is out of range (1 to 32768)")
        if self.temperature < 0:
            raise ValueError(f"temperature: {self.temperature} must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: {self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k: {self.top_k} must be 0 (off) or more")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty: {self.repetition_penalty} must be more than 0 (1 = off)")


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
    if models.is_reward_model(row):
        return f"'{row.name}' is a reward model: it scores answers, it does not write them"
    return available(row)


def available(row) -> Optional[str]:
    """Why a model's files cannot be loaded right now (None when they can)."""
    if row.status != "available":
        return f"'{row.name}' is {models.display_status(row)}"
    if row.source == "adapter":
        base = models.get_or_none(row.parent_id) if row.parent_id else None
        if base is None:
            return f"'{row.name}' is an adapter whose base model was deleted"
        if base.status != "available":
            return f"the base of '{row.name}', '{base.name}', is {models.display_status(base)}"
    folder = data_home() / (row.path or "")
    needed = "adapter_config.json" if row.source == "adapter" else "config.json"
    if not row.path or not (folder / needed).is_file():
        return f"'{row.name}' is missing files ({folder / needed})"
    return None


def load(row, weights: Optional[Path] = None):
    """(model, tokenizer) for a registered model; an adapter is put on its base.
    `weights`: one of its training checkpoints instead of the final weights."""
    why = usable(row)
    if why:
        raise ValueError(why)
    return load_from(*folders(row), weights=weights)


def folders(row) -> tuple[Path, Optional[Path]]:
    """(the model's folder, its base's folder when it is an adapter)."""
    folder = data_home() / row.path
    if row.source == "adapter" or (folder / "adapter_config.json").is_file():
        return folder, data_home() / models.get(row.parent_id).path
    return folder, None


def load_from(folder: Path, base: Optional[Path] = None, weights: Optional[Path] = None):
    """(model, tokenizer) from folders, without the database: `folder` holds the
    tokenizer and the weights (or `weights` does, a checkpoint); an adapter's are
    put on `base`'s model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = Path(weights or folder)
    if (weights / "adapter_config.json").is_file():
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, weights)
    else:
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.to(device).eval(), tokenizer


def prompt_text(tokenizer, messages: list[dict[str, str]], raw: bool = False) -> str:
    """The text the model continues: its chat template; for a tokenizer without one,
    the "### Instruction / ### Response" layout that fine-tuning here trains such
    models with (core.data.render); in raw mode the plain text (base models)."""
    if raw:
        return "\n".join(m["content"] for m in messages)
    if not tokenizer.chat_template:
        from core.data.render import PLAIN_PROMPT, bos_text

        turns = [m for m in messages if m["role"] != "system"]
        if len(turns) == 1:  # one question: the instruction layout
            history = turns[0]["content"]
        else:  # a conversation: role-prefixed lines, as chat data is trained
            history = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return bos_text(tokenizer) + PLAIN_PROMPT.format(prompt=history)
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


def _halt_when(event: threading.Event):
    """A stopping criterion that ends generate() once `event` is set."""
    import torch
    from transformers import StoppingCriteria

    class Halt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return Halt()


def _first_stop(text: str, stops: list[str]) -> Optional[int]:
    """Where the first stop string in `text` begins (None: there is none)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def visible_text(text: str, stops: list[str]) -> tuple[str, bool]:
    """What of `text` can be shown now, and whether a stop string was reached: the
    text before the first stop string, or else all but a tail that could still
    grow into one."""
    cut = _first_stop(text, stops)
    if cut is not None:
        return text[:cut], True
    longest = max((len(s) for s in stops), default=0)
    for n in range(min(len(text), longest - 1), 0, -1):
        if any(s.startswith(text[-n:]) for s in stops):
            return text[:-n], False
    return text, False


def stream(model, tokenizer, text: str, settings: Settings, stats: Optional[Stats] = None) -> Iterator[str]:
    """Yield the continuation of `text` piece by piece as it is generated; closing
    the generator stops the generation."""
    import torch
    from transformers import StoppingCriteriaList, set_seed

    stats = stats if stats is not None else Stats()
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    stats.prompt_tokens = int(inputs["input_ids"].shape[1])
    context = context_length(model)
    if context and stats.prompt_tokens >= context:
        raise ValueError(
            f"the prompt is {stats.prompt_tokens} tokens and this model reads at most {context}: "
            "clear the conversation or shorten the prompt"
        )
    halt = threading.Event()
    kwargs: dict[str, Any] = dict(
        max_new_tokens=min(settings.max_new_tokens, context - stats.prompt_tokens) if context else settings.max_new_tokens,
        repetition_penalty=settings.repetition_penalty,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        stopping_criteria=StoppingCriteriaList([_halt_when(halt)]),
    )
    if settings.temperature > 0:
        # top_k=0 is off (None would take the model's generation_config default, often 50)
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
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
    thread = threading.Thread(target=work, daemon=True, name="generate")
    thread.start()
    ids: list[int] = []
    shown = ""
    stopped = False
    eos = set(eos_ids(model, tokenizer))
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
            text_now, stopped = visible_text(full, settings.stop)
            if len(text_now) > len(shown):
                yield text_now[len(shown):]
                shown = text_now
            if stopped:
                break
    finally:
        halt.set()  # the consumer stopped or went away: generate() ends at its next token
        thread.join()
    stats.seconds = time.perf_counter() - start
    if stopped:
        return
    if errors:
        raise errors[0]
    full = tokenizer.decode(ids, skip_special_tokens=True)
    cut = _first_stop(full, settings.stop)
    full = full if cut is None else full[:cut]  # the end: nothing held back any more
    if len(full) > len(shown):
        yield full[len(shown):]


def context_length(model) -> Optional[int]:
    """How many positions the model was built for (None: no fixed limit known)."""
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def eos_ids(model, tokenizer) -> list[int]:
    """The tokens that end a reply: the generation config's and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return [i for i in ids + [tokenizer.eos_token_id] if i is not None]
