"""Scoring answers with a reward model: the number a registered reward model gives
a (prompt, answer) pair, tokenised exactly as TRL's RewardTrainer tokenised the
pairs it trained on (core.data.render.preference_example: a conversation through
the chat template, or the instruction layout as plain text with EOS appended).

    python -m core score --reward-model RM --prompt "What is 2+2?" --response "4"

Used by the score command and the RLHF page's score box, GRPO's reward-model
reward, and the reward evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from core.data.render import answer_example, prompt_example
from core.inference.generate import available
from core.models import registry as models
from storage.db import data_home


def usable(row) -> Optional[str]:
    """Why a model cannot score answers right now (None when it can)."""
    if not models.is_reward_model(row):
        return f"'{row.name}' is not a reward model (train one on a preference data set: RLHF page, or python -m core train reward)"
    return available(row)


def load(row, weights: Optional[Path] = None):
    """(model, tokenizer) of a registered reward model, on the GPU when there is one."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    why = usable(row)
    if why:
        raise ValueError(why)
    folder = data_home() / row.path
    model = AutoModelForSequenceClassification.from_pretrained(weights or folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def inputs(tokenizer, prompt: Any, response: Any) -> list[int]:
    """The token ids the reward model scores for a prompt and a response in the
    form training gave them (core.data.render: lists of messages, or plain text)."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt + response, tokenize=True, return_dict=True, tools=None)["input_ids"]
    eos = tokenizer.eos_token or ""
    if not response.endswith(eos):  # as RewardTrainer appends it to plain-text answers
        response += eos
    return tokenizer(text=prompt + response)["input_ids"]


def score(model, tokenizer, pairs: list[tuple[Any, Any]], batch_size: int = 8, formatted: bool = False) -> list[float]:
    """One score per (prompt, response) pair: the data set's words, or (formatted)
    already in the form the policy saw them. Batches are padded on the right, as in
    training: the head reads the last token that is not padding."""
    import torch

    out: list[float] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        if not formatted:
            chunk = [(prompt_example(p, tokenizer), answer_example(r, tokenizer)) for p, r in chunk]
        ids = [inputs(tokenizer, p, r) for p, r in chunk]
        width = max(len(i) for i in ids)
        batch = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=model.device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=model.device)
        with torch.no_grad():
            out += model(input_ids=batch, attention_mask=mask).logits[:, 0].float().tolist()
    return out
