"""Perplexity of a model (or of each checkpoint of its run) on the text of a data
set, with a sliding window over texts longer than the window.

    python -m core eval perplexity --model NAME --dataset NAME --wait --json
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Optional

from pydantic import Field, model_validator

from core.data import registry as datasets
from core.data.render import SFT_FORMATS, render_segments
from core.evaluation.common import EvalOnDataSpec, evaluate_targets, rows_of
from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.spec import SpecError

MAX_WINDOW = 1024
LIGHT_SAMPLES = 50
LIGHT_PARAMETERS = 200_000_000
"""A perplexity evaluation of up to LIGHT_SAMPLES rows of a model up to this size
(the starter is 135M) runs in the light lane."""


class EvalPerplexitySpec(EvalOnDataSpec):
    """Perplexity of a model (or each checkpoint of its run) on the text of a data set
    (text data as is; other formats as the model sees them in training), with a
    sliding window over texts longer than the window."""

    kind: ClassVar[str] = "eval_perplexity"
    command: ClassVar[tuple[str, ...]] = ("eval", "perplexity")

    max_samples: int = Field(200, ge=0)
    """Evaluate the first N rows of the split (0: all)."""
    max_length: int = Field(0, ge=0)
    """Window in tokens (0: the model's context length, at most 1024)."""
    stride: int = Field(0, ge=0)
    """How far the window moves (0: half the window); each token is scored once."""

    @model_validator(mode="after")
    def _window(self) -> "EvalPerplexitySpec":
        if self.max_length and self.max_length < 8:
            raise SpecError("max_length", f"{self.max_length}: use at least 8 tokens, or 0 for the model's context")
        if self.stride and self.max_length and self.stride >= self.max_length:
            raise SpecError("stride", f"{self.stride} must be shorter than the window ({self.max_length}): a longer stride leaves tokens unscored")
        return self

    def check_inputs(self) -> None:
        super().check_inputs()
        try:
            context = models.find(self.model).context_length
        except models.ModelError:
            return
        why = stride_problem(self, context)
        if why:
            raise SpecError("stride", why)

    def is_light(self) -> bool:
        """A few rows of a small model, no checkpoints: seconds (a forward pass per
        window, no generation)."""
        if not 0 < self.max_samples <= LIGHT_SAMPLES or self.checkpoints:
            return False
        try:
            row = models.find(self.model)
        except models.ModelError:
            return False
        size = row.num_parameters or 0
        if row.source == "adapter" and row.parent_id:
            size = models.get(row.parent_id).num_parameters or 0
        return 0 < size <= LIGHT_PARAMETERS

    def title(self) -> str:
        return f"Perplexity of '{self.model}' on '{self.dataset}'" + (" (checkpoints)" if self.checkpoints else "")


def text_of(fmt: str, row: dict[str, Any], tokenizer) -> tuple[str, bool]:
    """The text perplexity is measured on, and whether the tokenizer should add
    its special tokens (rendered examples already carry them)."""
    if fmt == "text":
        return row["text"], True
    if fmt in SFT_FORMATS:
        return "".join(t for t, _ in render_segments(fmt, row, tokenizer, completion_only=False)), False
    if fmt == "preference":
        return row["prompt"] + "\n" + row["chosen"], True
    return row["prompt"] + ("\n" + row["answer"] if row.get("answer") else ""), True


def window_nll(model, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """Summed negative log-likelihood of every token after the first, and how many:
    windows of `max_length` moved by `stride`, each token scored once with as much
    context as the window gives (the Hugging Face perplexity recipe)."""
    import torch
    import torch.nn.functional as F

    seq = torch.tensor([ids], device=model.device)
    n = seq.shape[1]
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        window = seq[:, begin:end]
        labels = window.clone()
        labels[:, : window.shape[1] - (end - prev_end)] = -100  # scored by an earlier window
        with torch.no_grad():
            logits = model(input_ids=window).logits.float()
        target = labels[:, 1:]
        total += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum").item()
        count += int((target != -100).sum())
        prev_end = end
        if end == n:
            break
    return total, count


def window_and_stride(spec: EvalPerplexitySpec, context: Optional[int]) -> tuple[int, int]:
    """The window (the model's context at most) and the stride, in tokens."""
    context = context or MAX_WINDOW
    window = min(spec.max_length, context) if spec.max_length else min(context, MAX_WINDOW)
    return window, spec.stride or max(1, window // 2)


def stride_problem(spec: EvalPerplexitySpec, context: Optional[int]) -> Optional[str]:
    """Why the stride leaves tokens unscored, or None."""
    window, stride = window_and_stride(spec, context)
    if stride < window:
        return None
    said = ", the model's context" if window == (context or MAX_WINDOW) else ""
    return f"{stride} must be shorter than the window ({window} tokens{said}): a longer stride leaves tokens unscored"


def run_eval_perplexity(spec: EvalPerplexitySpec, run: Run) -> dict[str, Any]:
    data_row = datasets.get(run.dataset_ids[0])
    row = models.get(run.model_ids[0])
    rows, split = rows_of(data_row, spec.split, spec.max_samples)
    window, stride = window_and_stride(spec, row.context_length)
    why = stride_problem(spec, row.context_length)  # checked at submit; the model may have been replaced
    if why:
        raise BadInput(f"stride: {why}")

    def score(model, tokenizer, tick):
        samples, nll, tokens, skipped = [], 0.0, 0, 0
        for i, r in enumerate(rows):
            text, special = text_of(data_row.format, r, tokenizer)
            ids = tokenizer(text, add_special_tokens=special)["input_ids"]
            if len(ids) < 2:
                skipped += 1
                continue
            s_nll, s_tokens = window_nll(model, ids, window, stride)
            nll, tokens = nll + s_nll, tokens + s_tokens
            samples.append(
                {
                    "idx": i,
                    "prompt": text,
                    "scores": {"perplexity": math.exp(s_nll / s_tokens), "nll": s_nll / s_tokens, "tokens": s_tokens},
                }
            )
            tick(i + 1, f"text {i + 1} of {len(rows)}")
        if not tokens:
            raise BadInput(f"dataset: no text in '{data_row.name}' has two or more tokens")
        metrics = {"perplexity": math.exp(nll / tokens), "nll": nll / tokens, "tokens": tokens, "texts": len(samples), "skipped": skipped}
        return metrics, samples

    result = evaluate_targets(spec, run, score, len(rows))
    result.update(split=split, num_samples=len(rows), settings={"window": window, "stride": stride})
    return result
