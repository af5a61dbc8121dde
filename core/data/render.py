"""How a data set row becomes a training example, in one place: the SFT job
feeds TRL with `training_example`, and the Datasets page previews the very same
thing with `render_segments` (which part the loss is on), so chat-template and
EOS mistakes show before training does.

    text         {"text": ...}                                  loss on everything (+ EOS)
    instruction  conversational prompt/completion (chat template), or plain
                 "### Instruction / ### Response" text when the tokenizer has no template
    chat         the conversation up to its last assistant turn as the prompt,
                 that turn as the completion
    preference   prompt, chosen and rejected answers, as the reward and DPO
                 trainers take them (`preference_example`)
    prompt       the prompt a policy answers in GRPO and PPO (`prompt_example`)

A tokenizer with a chat template gets conversations (TRL applies the template);
one without gets the "### Instruction / ### Response" layout as plain text.
"""

from __future__ import annotations

from typing import Any

PLAIN_PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"
SFT_FORMATS = ("text", "instruction", "chat")


def _chat_messages(fmt: str, row: dict[str, Any]) -> list[dict[str, str]]:
    if fmt == "chat":
        return list(row["messages"])
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return messages + [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]


def training_example(fmt: str, row: dict[str, Any], tokenizer, completion_only: bool = True) -> dict[str, Any]:
    """The example TRL's SFTTrainer gets for this row."""
    if fmt not in SFT_FORMATS:
        raise ValueError(f"supervised fine-tuning needs text, instruction or chat data, not {fmt}")
    if fmt == "text":
        return {"text": row["text"]}
    if tokenizer.chat_template:
        messages = _chat_messages(fmt, row)
        if not completion_only:
            return {"messages": messages}
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    if fmt == "chat":
        # no template: the conversation as plain text, the last answer as the completion
        history = "\n".join(f"{m['role']}: {m['content']}" for m in row["messages"][:-1])
        prompt, response = PLAIN_PROMPT.format(prompt=history), row["messages"][-1]["content"]
    else:
        prompt, response = PLAIN_PROMPT.format(prompt=row["prompt"]), row["response"]
    if not completion_only:
        return {"text": prompt + response}
    return {"prompt": prompt, "completion": response}


def prompt_example(prompt: str, tokenizer) -> Any:
    """A prompt as the policy sees it: a user turn (chat template) or the
    instruction layout as plain text."""
    if tokenizer.chat_template:
        return [{"role": "user", "content": prompt}]
    return PLAIN_PROMPT.format(prompt=prompt)


def answer_example(answer: str, tokenizer) -> Any:
    """An answer to a `prompt_example`: an assistant turn, or plain text."""
    return [{"role": "assistant", "content": answer}] if tokenizer.chat_template else answer


def preference_example(row: dict[str, Any], tokenizer) -> dict[str, Any]:
    """The pair TRL's RewardTrainer and DPOTrainer get for a preference row (they
    append EOS to plain-text answers themselves)."""
    return {
        "prompt": prompt_example(row["prompt"], tokenizer),
        "chosen": answer_example(row["chosen"], tokenizer),
        "rejected": answer_example(row["rejected"], tokenizer),
    }


def render_segments(fmt: str, row: dict[str, Any], tokenizer, completion_only: bool = True) -> list[tuple[str, bool]]:
    """The example as text the model sees: [(text, loss on it?), ...]. Mirrors
    TRL's tokenisation: chat template for conversations, EOS appended to plain
    text and completions."""
    ex = training_example(fmt, row, tokenizer, completion_only)
    eos = tokenizer.eos_token or ""
    if "text" in ex:
        return [(bos_text(tokenizer) + ex["text"] + eos, True)]
    if "messages" in ex:
        return [(tokenizer.apply_chat_template(ex["messages"], tokenize=False), True)]
    if isinstance(ex["prompt"], list):
        prompt = tokenizer.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False)
        if not full.startswith(prompt):  # a template that rewrites earlier turns
            return [(full, True)]
        return [(prompt, False), (full[len(prompt):], True)]
    return [(bos_text(tokenizer) + ex["prompt"], False), (ex["completion"] + eos, True)]


def bos_text(tokenizer) -> str:
    """The BOS token when the tokenizer adds one to plain text (as TRL's tokenisation does)."""
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer("a")["input_ids"][:1] == [bos]:
        return tokenizer.bos_token
    return ""


def token_lengths(fmt: str, rows: list[dict[str, Any]], tokenizer) -> list[int]:
    """Tokens per example as trained (text of all segments), for statistics."""
    if fmt not in SFT_FORMATS:
        # preference and prompt data: the prompt plus the longer answer
        texts = [r["prompt"] + max(r.get("chosen", ""), r.get("rejected", ""), key=len) for r in rows]
    else:
        texts = ["".join(t for t, _ in render_segments(fmt, r, tokenizer)) for r in rows]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]  # BOS is already in the rendered text
    return [len(ids) for ids in enc]
