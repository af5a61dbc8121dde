"""Streaming generation (the playground's core) and `python -m core generate`."""

from __future__ import annotations

import pytest
import torch

from core.inference import generate
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec


@pytest.fixture
def tiny(home):
    job = jobs.wait(jobs.submit(CreateModelSpec(name="tiny", arch="llama", size="tiny", seed=3)), timeout_s=120)
    assert job.status == "succeeded"
    return models.find("tiny")


def test_stream_is_incremental_and_equals_greedy_generate(tiny):
    model, tok = generate.load(tiny)
    text = generate.prompt_text(tok, [{"role": "user", "content": "Tell me about the module."}])
    assert text.endswith("<|im_start|>assistant\n")
    stats = generate.Stats()
    chunks = list(generate.stream(model, tok, text, generate.Settings(max_new_tokens=24, temperature=0), stats))
    assert len(chunks) > 1
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "".join(chunks) == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert stats.prompt_tokens == ids["input_ids"].shape[1] and 0 < stats.new_tokens <= 24 and stats.tokens_per_s > 0


def test_same_seed_same_sample(tiny):
    model, tok = generate.load(tiny)
    settings = generate.Settings(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    first = "".join(generate.stream(model, tok, "The", settings))
    again = "".join(generate.stream(model, tok, "The", settings))
    assert first == again


def test_a_model_in_training_or_missing_files_cannot_be_used(tiny, home):
    import shutil

    assert generate.usable(tiny) is None
    queued = jobs.submit(CreateModelSpec(name="not-yet", size="tiny"), start=False)
    assert generate.usable(models.get(jobs.get(queued).model_ids[0])) == "'not-yet' is creating"
    shutil.rmtree(home / tiny.path)
    assert "missing files" in generate.usable(models.get(tiny.id))


def test_a_model_without_chat_template_gets_the_layout_it_was_fine_tuned_with(tiny):
    from core.data.render import PLAIN_PROMPT

    _, tok = generate.load(tiny)
    tok.chat_template = None
    one = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What do bees make?"}]
    assert generate.prompt_text(tok, one) == PLAIN_PROMPT.format(prompt="What do bees make?")
    assert generate.prompt_text(tok, one, raw=True) == "Be brief.\nWhat do bees make?"
    two = one + [{"role": "assistant", "content": "Honey."}, {"role": "user", "content": "And ants?"}]
    assert generate.prompt_text(tok, two) == PLAIN_PROMPT.format(
        prompt="system: Be brief.\nuser: What do bees make?\nassistant: Honey.\nuser: And ants?"
    )


@pytest.mark.fast
def test_settings_are_checked():
    with pytest.raises(ValueError, match="temperature: -1"):
        generate.Settings(temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens: 0"):
        generate.Settings(max_new_tokens=0)


def test_generate_command_streams_to_the_terminal(tiny, cli):
    out = cli("generate", "--model", "tiny", "--max-new-tokens", "12", "--temperature", "0", "Hello there")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout) > 1 and "12 new" in out.stderr and "tokens/s" in out.stderr
    missing = cli("generate", "--model", "nope", "hi")
    assert missing.returncode == 2 and "there is no model" in missing.stderr
