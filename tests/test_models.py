"""Models end to end: scratch (gpt2, llama), import a folder, hub offline, the
registry (rename, delete, in-use refusal), and the starter conversion (slow)."""

from __future__ import annotations


import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec
from core.models.importer import ImportModelSpec
from core.models.starter import AddStarterSpec
from core.spec import SpecError


def make(spec) -> models.Model:
    job = jobs.wait(jobs.submit(spec), timeout_s=180)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    return models.get(job.result["model_id"])


def test_scratch_llama_loads_and_chats(home):
    row = make(CreateModelSpec(name="tiny-llama", arch="llama", size="tiny", n_layer=3, context_length=128))
    folder = home / row.path
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 3 and row.context_length == 128
    assert row.num_parameters == sum(p.numel() for p in model.parameters())
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # the tokenizer was trained on the corpus: common words are single tokens
    assert len(tok(" the")["input_ids"]) == 1
    assert models.lineage(row) == [f"tiny-llama (scratch: llama/tiny) by job {row.job_id}"]


@pytest.mark.fast
def test_small_preset_has_tens_of_millions_of_parameters():
    dims = CreateModelSpec(name="s", size="small").dims()
    # gpt2: 12*L*h^2 in the blocks + vocab*h embedding
    approx = 12 * dims["n_layer"] * dims["hidden_size"] ** 2 + dims["vocab_size"] * dims["hidden_size"]
    assert 10e6 < approx < 100e6


def test_import_local_folder_keeps_the_weights(home):
    src = make(CreateModelSpec(name="orig", size="tiny", seed=7))
    copy = make(ImportModelSpec(source=str(home / src.path), name="copy"))
    assert copy.source == "local" and copy.origin == str(home / src.path)
    a = AutoModelForCausalLM.from_pretrained(home / src.path)
    b = AutoModelForCausalLM.from_pretrained(home / copy.path)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(a(ids).logits, b(ids).logits)
    assert all(f.suffix != ".bin" for f in (home / copy.path).iterdir())


def test_hub_import_offline_fails_fast_and_clearly(home):
    job = jobs.wait(jobs.submit(ImportModelSpec(source="distilgpt2", name="d")), timeout_s=120)
    assert job.status == "failed" and job.error_class == "bad_input"
    assert "cannot reach the Hugging Face Hub" in job.error and "local folder" in job.error
    # fast: the offline setting is read before any connection is tried
    assert "(HF_HUB_OFFLINE is set)" in job.error


@pytest.mark.fast
def test_import_validation_names_the_problem(home, tmp_path):
    with pytest.raises(SpecError, match="source: .* has no config.json"):
        ImportModelSpec(source=str(tmp_path), name="x")
    with pytest.raises(SpecError, match="source: .*does-not-exist.gguf does not exist"):
        ImportModelSpec(source=str(tmp_path / "does-not-exist.gguf"), name="x")
    with pytest.raises(SpecError, match="neither an existing local path nor a Hub id"):
        ImportModelSpec(source="not a hub id!", name="x")
    with pytest.raises(SpecError, match="name: give it a name"):
        CreateModelSpec(name="  ")
    with pytest.raises(SpecError, match="vocab_size: 10: input should be greater than or equal to 300"):
        CreateModelSpec(name="v", vocab_size=10)
    with pytest.raises(SpecError, match="size 'custom' needs n_layer"):
        CreateModelSpec(name="c", size="custom")


def test_rename_delete_and_refusal_while_in_use(home, monkeypatch):
    row = make(CreateModelSpec(name="keep-me", size="tiny"))
    models.rename(row.id, "renamed")
    assert models.find("renamed").id == row.id
    other = make(CreateModelSpec(name="other", size="tiny"))
    with pytest.raises(SpecError, match="already exists"):
        models.rename(row.id, "OTHER")

    # a queued job that uses the model blocks deletion
    monkeypatch.setenv("LLMDEV_MAX_CONCURRENT_JOBS", "1")
    job_id = jobs.submit(CreateModelSpec(name="busy", size="tiny"), start=False)
    busy_id = jobs.get(job_id).model_ids[0]
    with pytest.raises(models.ModelError, match=f"in use by job {job_id}"):
        models.delete(busy_id)
    assert models.display_status(models.get(busy_id)) == "creating"
    jobs.cancel(job_id)

    folder = home / row.path
    models.delete(row.id)
    assert not folder.exists()
    assert [m.name for m in models.list_models()] == ["other"]
    assert (home / other.path).exists()


@pytest.mark.slow
def test_starter_conversion_answers_sensibly(home):
    row = make(AddStarterSpec())
    assert row.source == "starter" and row.architecture == "LlamaForCausalLM"
    assert 130e6 < row.num_parameters < 140e6 and row.vocab_size == 49152 and row.has_chat_template
    assert "Paris" in row.details["sample"]
    folder = home / row.path
    assert sorted(p.suffix for p in folder.glob("*.safetensors")) == [".safetensors"]
    # a plain from_pretrained(folder) chats through the chat template
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    msgs = [{"role": "user", "content": "Name a colour of the sky on a clear day. One word."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "blue" in answer.lower()
    assert "quantization_config" not in (folder / "config.json").read_text()


@pytest.mark.slow
def test_import_local_gguf_file(home):
    from core.models.starter import starter_gguf

    row = make(ImportModelSpec(source=str(starter_gguf()), name="from-gguf"))
    assert row.source == "local" and row.origin.endswith(".gguf")
    assert row.architecture == "LlamaForCausalLM" and row.dtype == "float32"
    assert "Paris" in row.details["sample"]
