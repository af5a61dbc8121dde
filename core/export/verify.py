"""Does an exported decoder compute what the model does? The same inputs through
PyTorch and onnxruntime, side by side:

- `prefill_max_abs`: the largest logit difference over one prompt;
- `padded_max_abs`: the same over a left-padded batch of two prompts (real
  positions only: a padded position's logits mean nothing);
- `decode_max_abs`: one decode step of that batch, with the cache each side made;
- `greedy_match`: greedy tokens equal for `steps` steps with the cache (and
  `greedy_first_mismatch`: the step where they part, if they do);
- `argmax_agreement`: the share of positions where both pick the same next
  token, teacher-forced over the prompt and PyTorch's greedy continuation;
- `torch_tokens_per_s`, `onnx_tokens_per_s`: the greedy decode of both.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from core.export.onnx import OrtDecoder, positions

PROMPTS = (
    "The capital of France is",
    "Here is a short list of fruits: apple, banana,",
)


def _torch_forward(model, ids, mask, pos, cache):
    import torch

    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
    return out.logits.float().numpy(), out.cache


def _ort_arrays(ids, mask, pos):
    return ids.numpy().astype(np.int64), mask.numpy().astype(np.int64), pos.numpy().astype(np.int64)


def _batch(tokenizer, prompts: tuple[str, ...]):
    """Left-padded ids and mask (pad id 0 where the tokenizer has none: masked anyway)."""
    import torch

    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] or [0] for p in prompts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _greedy(step, ids, steps: int) -> tuple[list[int], float]:
    """`step(ids, mask, pos, past) -> (logits, past)` run greedily from one prompt:
    the tokens and the decode rate (tokens after the first / their time)."""
    import torch

    mask = torch.ones_like(ids)
    logits, past = step(ids, mask, positions(mask), None)
    tokens = [int(np.argmax(logits[0, -1]))]
    start = time.perf_counter()
    for _ in range(steps - 1):
        mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
        nxt = torch.tensor([[tokens[-1]]])
        logits, past = step(nxt, mask, (mask.sum(-1, keepdim=True) - 1), past)
        tokens.append(int(np.argmax(logits[0, -1])))
    elapsed = time.perf_counter() - start
    return tokens, (steps - 1) / elapsed if elapsed > 0 else 0.0


def verify(model, tokenizer, onnx_path, steps: int = 20, threads: Optional[int] = None, prompts: tuple[str, ...] = PROMPTS) -> dict[str, Any]:
    """The numbers above for a model in eval mode (fp32) and its export."""
    import torch
    from transformers import DynamicCache

    ort = OrtDecoder(onnx_path, threads=threads)

    def torch_step(ids, mask, pos, past):
        return _torch_forward(model, ids, mask, pos, past if past is not None else DynamicCache())

    def ort_step(ids, mask, pos, past):
        a, m, p = _ort_arrays(ids, mask, pos)
        return ort(a, m, p, past if past is not None else ort.empty_past(a.shape[0]))

    result: dict[str, Any] = {"steps": steps, "prompts": list(prompts)}
    # one prompt, then a left-padded batch of two, then a decode step of that batch
    one, one_mask = _batch(tokenizer, prompts[:1])
    t_logits, _ = torch_step(one, one_mask, positions(one_mask), None)
    o_logits, _ = ort_step(one, one_mask, positions(one_mask), None)
    result["prefill_max_abs"] = float(np.abs(t_logits - o_logits).max())
    ids, mask = _batch(tokenizer, prompts[:2])
    t_logits, t_past = torch_step(ids, mask, positions(mask), None)
    o_logits, o_past = ort_step(ids, mask, positions(mask), None)
    real = mask.numpy().astype(bool)
    result["padded_max_abs"] = float(np.abs(t_logits - o_logits)[real].max())
    nxt = torch.tensor(t_logits[:, -1].argmax(-1)).reshape(-1, 1)
    mask2 = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype)], dim=1)
    pos2 = mask2.sum(-1, keepdim=True) - 1
    t_logits, _ = torch_step(nxt, mask2, pos2, t_past)
    o_logits, _ = ort_step(nxt, mask2, pos2, o_past)
    result["decode_max_abs"] = float(np.abs(t_logits - o_logits).max())
    # greedy with the cache, from the first prompt
    t_tokens, t_rate = _greedy(torch_step, one, steps)
    o_tokens, o_rate = _greedy(ort_step, one, steps)
    parted = next((i for i, (a, b) in enumerate(zip(t_tokens, o_tokens)) if a != b), None)
    result.update(
        greedy_match=parted is None,
        greedy_first_mismatch=parted,
        greedy_tokens_torch=t_tokens,
        greedy_tokens_onnx=o_tokens,
        torch_tokens_per_s=round(t_rate, 2),
        onnx_tokens_per_s=round(o_rate, 2),
    )
    # teacher-forced: the prompt and PyTorch's continuation, one pass each side
    seq = torch.cat([one, torch.tensor([t_tokens])], dim=1)
    seq_mask = torch.ones_like(seq)
    t_logits, _ = torch_step(seq, seq_mask, positions(seq_mask), None)
    o_logits, _ = ort_step(seq, seq_mask, positions(seq_mask), None)
    result["argmax_agreement"] = float((t_logits.argmax(-1) == o_logits.argmax(-1)).mean())
    result["teacher_forced_max_abs"] = float(np.abs(t_logits - o_logits).max())
    return result
