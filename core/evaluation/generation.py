"""Answers generated for the prompts of a data set, scored against its references:
BLEU, chrF, ROUGE-1/2/L, exact match and contains-answer.

    python -m core eval generation --model NAME --dataset NAME --checkpoints --wait
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterator, Optional

from pydantic import Field

from core.data import registry as datasets
from core.data.render import PLAIN_PROMPT, bos_text
from core.evaluation import scoring
from core.evaluation.common import EvalOnDataSpec, evaluate_targets, rows_of
from core.inference import generate
from core.jobs.run import BadInput, Run
from core.models import registry as models
from storage.db import data_home


class EvalGenerationSpec(EvalOnDataSpec):
    """Answers generated for the prompts of a data set (instruction, chat, or prompt
    data with answers), scored against its references: BLEU, chrF, ROUGE-1/2/L,
    exact match and contains-answer."""

    kind: ClassVar[str] = "eval_generation"
    command: ClassVar[tuple[str, ...]] = ("eval", "generation")
    dataset_formats: ClassVar[tuple[str, ...]] = ("instruction", "chat", "prompt")

    max_new_tokens: int = Field(64, ge=1, le=32768)
    """Longest answer, in tokens."""
    temperature: float = Field(0.0, ge=0, le=10)
    """0 = greedy."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling (with temperature > 0)."""
    batch_size: int = Field(8, ge=1, le=4096)
    """Prompts generated together."""

    def title(self) -> str:
        return f"Generation metrics of '{self.model}' on '{self.dataset}'" + (" (checkpoints)" if self.checkpoints else "")


def prompts_of(fmt: str, rows: list[dict[str, Any]], tokenizer,
               need_reference: bool = True) -> list[tuple[int, str, str, str, bool]]:
    """(row index, question, prompt text, reference, add special tokens) for every row
    with a reference (or every row), prompted the way training formats it (chat
    template, or the plain instruction layout for tokenizers without one)."""
    out = []
    for i, r in enumerate(rows):
        if fmt == "chat":
            messages = list(r["messages"])
            if messages and messages[-1]["role"] == "assistant":
                context, reference = messages[:-1], messages[-1]["content"]
            elif messages and not need_reference:
                context, reference = messages, None
            else:
                continue
        else:
            reference = {"instruction": r.get("response"), "preference": r.get("chosen")}.get(fmt, r.get("answer"))
            if not reference and need_reference:
                continue
            context = ([{"role": "system", "content": r["system"]}] if r.get("system") else []) + [
                {"role": "user", "content": r["prompt"]}
            ]
        question = "\n".join(m["content"] for m in context if m["role"] != "system")
        if tokenizer.chat_template:
            text, special = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True), False
        else:
            history = question if fmt != "chat" else "\n".join(f"{m['role']}: {m['content']}" for m in context)
            text, special = bos_text(tokenizer) + PLAIN_PROMPT.format(prompt=history), False
        out.append((i, question, text, reference, special))
    return out


def prompt_room(model, spec) -> Optional[int]:
    """Tokens a prompt may take so that it and the answer fit the model's context
    (None: no known limit)."""
    context = generate.context_length(model)
    if not context:
        return None
    room = context - spec.max_new_tokens
    if room < 8:
        raise BadInput(
            f"max_new_tokens: {spec.max_new_tokens} leaves no room for the prompt in this model's "
            f"context of {context} tokens; use at most {context - 8}"
        )
    return room


def _ticker(prompt_length: int, eos: list[int], on_token: Callable[[int, int], None]):
    """A stopping criterion that stops nothing: after each new token it reports
    (answers of the batch finished, tokens so far), so a batch shows progress
    (and a cancel lands) while it generates."""
    import torch
    from transformers import StoppingCriteria

    eos_ids = torch.tensor(eos or [-1])

    class Ticker(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            new = input_ids[:, prompt_length:]
            on_token(int(torch.isin(new, eos_ids.to(new.device)).any(dim=1).sum()), new.shape[1])
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return Ticker()


def generate_batch(model, tokenizer, texts: list[str], spec, special: bool,
                   on_token: Optional[Callable[[int, int], None]] = None) -> tuple[list[str], int]:
    """Answers to a batch of prompts (left-padded), special tokens removed, and how
    many prompts were cut from the left to fit the context with the answer.
    `on_token(finished, tokens)` is called after every generated token."""
    import torch

    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # keep the end of a long prompt: the question
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    room = prompt_room(model, spec)
    truncated = 0
    if room is not None:
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]
        truncated = sum(n > room for n in lengths)
    enc = tokenizer(
        texts, return_tensors="pt", padding=True, add_special_tokens=special, truncation=room is not None, max_length=room
    ).to(model.device)
    # every setting explicit: None would take the model's generation_config defaults
    kwargs: dict[str, Any] = dict(
        max_new_tokens=spec.max_new_tokens, pad_token_id=tokenizer.pad_token_id, repetition_penalty=1.0
    )
    if spec.temperature > 0:
        kwargs.update(do_sample=True, temperature=spec.temperature, top_p=spec.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if on_token is not None:
        from transformers import StoppingCriteriaList

        eos = model.generation_config.eos_token_id
        eos = [e for e in (eos if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id] if e is not None]
        kwargs["stopping_criteria"] = StoppingCriteriaList([_ticker(enc["input_ids"].shape[1], eos, on_token)])
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    answers = [tokenizer.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for o in out]
    return answers, truncated


def answers(model, tokenizer, prompts, spec, tick, counts: dict[str, int]) -> Iterator[tuple[tuple, str]]:
    """Yield (prompt entry, answer) batch by batch, seeded once; counts["truncated_prompts"]
    says how many prompts were cut to fit the context."""
    from transformers import set_seed

    set_seed(spec.seed)
    counts.setdefault("truncated_prompts", 0)
    for start in range(0, len(prompts), spec.batch_size):
        batch = prompts[start : start + spec.batch_size]

        def on_token(finished: int, tokens: int, start: int = start, size: int = len(batch)) -> None:
            tick(start + finished, f"answers {start + 1}-{start + size} of {len(prompts)}: "
                                   f"{finished} finished, token {tokens} of at most {spec.max_new_tokens}")

        outputs, truncated = generate_batch(model, tokenizer, [p[2] for p in batch], spec, batch[0][4], on_token)
        counts["truncated_prompts"] += truncated
        yield from zip(batch, outputs)
        tick(start + len(batch), f"answer {start + len(batch)} of {len(prompts)}")


def generation_settings(spec) -> dict[str, Any]:
    return {k: getattr(spec, k) for k in ("max_new_tokens", "temperature", "top_p", "batch_size", "seed")}


def prompts_for(spec, run: Run):
    """The data set, its rows, the split used and how many rows have a reference."""
    data_row = datasets.get(run.dataset_ids[0])
    rows, split = rows_of(data_row, spec.split, spec.max_samples)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(data_home() / models.get(run.model_ids[0]).path)
    n = len(prompts_of(data_row.format, rows, tokenizer))
    if not n:
        raise BadInput(f"dataset: no row of the {split} split of '{data_row.name}' has a reference answer")
    return data_row, rows, split, n


def run_eval_generation(spec: EvalGenerationSpec, run: Run) -> dict[str, Any]:
    data_row, rows, split, n_prompts = prompts_for(spec, run)

    def score(model, tokenizer, tick):
        prompts = prompts_of(data_row.format, rows, tokenizer)
        samples, outputs, references, counts = [], [], [], {}
        for (i, question, _text, reference, _), output in answers(model, tokenizer, prompts, spec, tick, counts):
            scores = scoring.sample_scores(output, reference)
            samples.append({"idx": i, "prompt": question, "reference": reference, "output": output, "scores": scores})
            outputs.append(output)
            references.append(reference)
        metrics = scoring.corpus_scores(outputs, references, [s["scores"] for s in samples])
        metrics.update(samples=len(samples), **counts)
        return metrics, samples

    result = evaluate_targets(spec, run, score, n_prompts)
    result.update(split=split, num_samples=len(rows), settings=generation_settings(spec))
    return result
