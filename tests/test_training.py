"""Supervised fine-tuning end to end on the tiny scratch model: full, LoRA,
QLoRA; pause and resume; merge; the YAML command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import wait_for
from core.data import registry as datasets
from core.data.importer import ImportDatasetSpec
from core.export.merge import MergeAdapterSpec
from core.hardware import qlora_unavailable
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec
from core.spec import SpecError
from core.training.sft import SFTSpec

FACTS = [
    ("What colour is the sky on a clear day?", "Blue."),
    ("What do bees make?", "Honey."),
    ("How many legs does a spider have?", "Eight."),
    ("What is frozen water called?", "Ice."),
    ("Which planet do we live on?", "Earth."),
    ("What do cows drink?", "Water."),
]


@pytest.fixture
def tiny(home, tmp_path, prepared):
    """A tiny llama model and a small memorisable instruction set."""
    def build():
        base = jobs.wait(jobs.submit(CreateModelSpec(name="base", arch="llama", size="tiny")), timeout_s=120)
        assert base.status == "succeeded"
        path = tmp_path / "facts.jsonl"
        path.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in FACTS * 4))
        data = jobs.wait(jobs.submit(ImportDatasetSpec(path=str(path), name="facts", validation_fraction=0.25)),
                         timeout_s=120)
        assert data.status == "succeeded", data.log_tail

    prepared("training-base-facts", build)
    return models.find("base")


def train(**overrides) -> "jobs.Job":
    args = dict(model="base", dataset="facts", output_name="out", max_steps=40, batch_size=4, save_steps=20, eval_steps=20)
    args.update(overrides)
    job = jobs.wait(jobs.submit(SFTSpec(**args)), timeout_s=300)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    return job


def loss_fell(job_id: int) -> tuple[float, float]:
    losses = [v for _, v in jobs.metrics(job_id)["train_loss"]]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    return first, last


METHODS = ["full", "lora", "qlora"]


@pytest.mark.fast
def test_qlora_is_refused_where_it_cannot_run():
    why = qlora_unavailable()
    if not why:
        pytest.skip("QLoRA runs on this machine (bitsandbytes 4-bit works here): it is trained below, not refused")
    with pytest.raises(SpecError, match="method: QLoRA cannot run on this machine"):
        SFTSpec(model="base", dataset="facts", output_name="out", method="qlora").check_inputs()  # as submit does


@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_and_registers_its_output(tiny, home, method):
    if method == "qlora" and qlora_unavailable():
        pytest.skip(f"QLoRA cannot run on this machine: {qlora_unavailable()}")
    # LoRA on a random 64-wide model cannot move the (tied) output embedding:
    # it learns, but more slowly than full fine-tuning
    lr, steps = (2e-2, 40) if method == "full" else (5e-2, 80)
    job = train(method=method, learning_rate=lr, max_steps=steps, output_name=f"out-{method}")
    series = jobs.metrics(job.id)
    assert len(series["train_loss"]) == steps
    assert {"learning_rate", "grad_norm", "eval_loss", "tokens_per_s", "peak_memory_mb"} <= set(series)
    first, last = loss_fell(job.id)
    assert (last < 0.6 * first) if method == "full" else (last < first - 0.3), (first, last)

    out = models.get(job.result["model_id"])
    assert out.parent_id == tiny.id and out.status == "available"
    assert out.source == ("trained" if method == "full" else "adapter")
    assert out.details["dataset_fingerprint"] == datasets.find("facts").fingerprint
    assert out.details["spec"]["method"] == method
    assert models.lineage(out)[0].startswith("base (scratch")
    folder = home / out.path
    assert (folder / "README.md").read_text().startswith(f"# out-{method}")
    run = jobs.run_dir(job.id)
    assert {"training_args.json", "spec.yaml", "environment.json"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "environment.json").read_text())["packages"]["trl"] == "1.12.0"

    probe = json.loads((run / "probe.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(home / tiny.path)
    if method == "full":
        trained = AutoModelForCausalLM.from_pretrained(folder)
        changed = [n for n, p in trained.named_parameters() if not torch.equal(p, base.state_dict()[n])]
        assert len(changed) > 10
    else:
        adapter = load_file(folder / "adapter_model.safetensors")
        assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())
        trained = PeftModel.from_pretrained(base, folder)  # plain peft, as a user would
    trained.eval()
    with torch.no_grad():
        logits = trained(input_ids=torch.tensor(probe["input_ids"])).logits[0, -1, :16]
    # QLoRA trained on a 4-bit base; the reload puts the adapter on the full-precision base
    tolerance = 0.5 if method == "qlora" else 1e-4
    assert torch.allclose(logits, torch.tensor(probe["logits"]), atol=tolerance)


def test_pause_then_resume_continues_the_curve(tiny, monkeypatch):
    job_id = jobs.submit(SFTSpec(model="base", dataset="facts", output_name="paused", method="lora", learning_rate=1e-2, max_steps=3000, save_steps=1000, eval_steps=0))
    wait_for(lambda: jobs.get(job_id).progress_step >= 20, 120, what="training to get going")
    assert jobs.cancel(job_id, mode="pause") == "stopping"
    paused = jobs.wait(job_id, timeout_s=120)
    assert paused.status == "paused" and paused.error.startswith("paused at step")
    step = paused.result["step"]
    assert paused.result["checkpoint"].endswith(f"checkpoint-{step}")
    assert models.list_models()[-1].name == "base"  # the unfinished output is not registered

    from core.training.common import resume

    new_id = resume(job_id)
    wait_for(lambda: len(jobs.metrics(new_id).get("train_loss", [])) >= 3, 120, what="the resumed run to log")
    jobs.cancel(new_id)
    jobs.wait(new_id, timeout_s=120)
    assert jobs.get(new_id).resumed_from == job_id
    before = jobs.metrics(job_id)["train_loss"]
    after = jobs.metrics(new_id)["train_loss"]
    assert after[0][0] == step + 1  # starts at the saved step
    assert abs(after[0][1] - before[-1][1]) < 0.25 * before[-1][1]
    tokens_before, tokens_after = jobs.metrics(job_id)["num_tokens"], jobs.metrics(new_id)["num_tokens"]
    assert tokens_after[0][1] > tokens_before[-1][1]  # the token count carries on
    history = jobs.metrics_with_history(new_id)["train_loss"]
    assert [s for s, _ in history] == sorted(s for s, _ in history) and history[0][0] == 1


def test_merge_adapter_gives_the_same_logits(tiny, home):
    train(method="lora", learning_rate=2e-2, output_name="adapter", max_steps=10)
    # what cannot work is refused before a job starts, saying what to do instead
    with pytest.raises(SpecError, match="model: 'base' is a scratch model, not a LoRA adapter"):
        jobs.submit(MergeAdapterSpec(model="base", output_name="nothing"))
    with pytest.raises(SpecError, match="model: 'adapter' is a LoRA adapter: train from a full model .* export merge --model adapter"):
        jobs.submit(SFTSpec(model="adapter", dataset="facts", output_name="nothing"))
    merged_job = jobs.wait(jobs.submit(MergeAdapterSpec(model="adapter", output_name="merged")), timeout_s=120)
    assert merged_job.status == "succeeded", merged_job.log_tail
    merged = models.find("merged")
    assert merged.source == "trained" and merged.parent_id == models.find("adapter").id
    ids = torch.tensor([[5, 6, 7, 8]])
    base = AutoModelForCausalLM.from_pretrained(home / tiny.path)
    with_adapter = PeftModel.from_pretrained(base, home / models.find("adapter").path).eval()
    plain = AutoModelForCausalLM.from_pretrained(home / merged.path).eval()
    with torch.no_grad():
        assert torch.allclose(with_adapter(ids).logits, plain(ids).logits, atol=1e-4)
    assert "LoRA" not in json.dumps(merged.details)
    assert merged.details["merged_from"]["max_abs_logit_diff"] < 1e-4
    folder = home / merged.path
    assert {"generation_config.json", "tokenizer.json", "README.md"} <= {p.name for p in folder.iterdir()}
    assert "Lineage: base (scratch" in (folder / "README.md").read_text()
    # it loads with plain transformers in a clean interpreter and computes the same logits
    code = (
        "import sys, json, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval(); AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "print(json.dumps(m(torch.tensor([[5, 6, 7, 8]])).logits[0, -1].tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with torch.no_grad():
        want = with_adapter(ids).logits[0, -1]
    assert torch.allclose(torch.tensor(json.loads(out.stdout)), want, atol=1e-4)


def test_bad_training_specs_are_refused_before_anything_runs(tiny, tmp_path):
    with pytest.raises(SpecError, match="model: there is no model 'nope'"):
        jobs.submit(SFTSpec(model="nope", dataset="facts", output_name="x"))
    with pytest.raises(SpecError, match="method: 'ppo': input should be 'full', 'lora' or 'qlora'"):
        SFTSpec(model="base", dataset="facts", output_name="x", method="ppo")
    with pytest.raises(SpecError, match="batch_size: 0"):
        SFTSpec(model="base", dataset="facts", output_name="x", batch_size=0)
    with pytest.raises(SpecError, match="epochs: give epochs > 0 or max_steps"):
        SFTSpec(model="base", dataset="facts", output_name="x", epochs=0)
    assert SFTSpec(model="base", dataset="facts", output_name="x", epochs=0, max_steps=5).epochs == 0
    with pytest.raises(SpecError, match="resume_from_job: job 99 left no complete checkpoint"):
        jobs.submit(SFTSpec(model="base", dataset="facts", output_name="x", resume_from_job=99))
    pref = tmp_path / "pref.jsonl"
    pref.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    assert jobs.wait(jobs.submit(ImportDatasetSpec(path=str(pref), name="pref")), timeout_s=120).status == "succeeded"
    with pytest.raises(SpecError, match="dataset: 'pref' is preference data"):
        jobs.submit(SFTSpec(model="base", dataset="pref", output_name="x"))
    assert [j.kind for j in jobs.list_jobs()] == ["import_dataset", "import_dataset", "create_model"]


def test_yaml_spec_on_the_command_line(tiny, cli, tmp_path):
    spec = tmp_path / "run.yaml"
    spec.write_text("kind: sft\nmodel: base\ndataset: facts\nmethod: lora\noutput_name: from-yaml\nmax_steps: 5\n")
    out = cli("train", str(spec), "--wait")
    assert out.returncode == 0, out.stderr
    job = jobs.get(int(out.stdout.strip().splitlines()[-1]))
    assert job.spec["max_steps"] == 5 and models.find("from-yaml").source == "adapter"
    # the run folder holds the YAML that replays it, with the values it ran with; the
    # log says where a value the spec left to a default came from
    replay = (jobs.run_dir(job.id) / "spec.yaml").read_text()
    assert "output_name: from-yaml" in replay and "max_steps: 5" in replay and "learning_rate: 0.0002" in replay
    assert "learning_rate = 0.0002 (learning_rate 0 in the spec: SFT's default for LoRA and QLoRA)" in jobs.log_path(job.id).read_text()
    assert job.spec["learning_rate"] == 0  # the job row keeps what was asked

    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: sft\nmodel: base\ndataset: facts\nmethod: lora\noutput_name: x\nmax_stepz: 5\n")
    refused = cli("train", str(bad))
    assert refused.returncode == 2 and "max_stepz: not a field of sft" in refused.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: sft\nmodel: [base\n")
    refused = cli("train", str(broken))
    assert refused.returncode == 2 and "line 3" in refused.stderr and "not valid YAML" in refused.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text("kind: sft\nmodel: base\n")
    refused = cli("train", str(missing))
    assert refused.returncode == 2 and "dataset" in refused.stderr and "output_name" in refused.stderr


def test_two_processes_train_with_ddp_on_the_cpu(tiny):
    """The multi-GPU path (torchrun, DDP) for real, with two CPU processes and gloo."""
    job = train(method="lora", learning_rate=2e-2, output_name="ddp", max_steps=8, processes=2, eval_steps=0)
    assert job.result["processes"] == 2
    run = jobs.run_dir(job.id)
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
    assert json.loads((run / "training_args.json").read_text())["ddp_backend"] == "gloo"
    log = (run / "log.txt").read_text()
    assert "rank 0 of 2 training" in log and "rank 1 of 2 training" in log
    assert len(jobs.metrics(job.id)["train_loss"]) == 8  # one writer: rank 0
    assert models.find("ddp").source == "adapter"


def test_ddp_run_pauses_on_all_ranks_and_resumes(tiny):
    job_id = jobs.submit(SFTSpec(model="base", dataset="facts", output_name="ddp-pause", method="lora", max_steps=3000, save_steps=1000, eval_steps=0, processes=2))
    wait_for(lambda: jobs.get(job_id).progress_step >= 10, 180, what="DDP training to get going")
    assert jobs.cancel(job_id, mode="pause") == "stopping"
    paused = jobs.wait(job_id, timeout_s=120)
    assert paused.status == "paused" and paused.error.startswith("paused at step"), paused.log_tail
    from core.training.common import resume

    new_id = resume(job_id)
    wait_for(lambda: jobs.metrics(new_id).get("train_loss"), 180, what="the resumed DDP run to log")
    assert jobs.cancel(new_id) == "stopping"
    assert jobs.wait(new_id, timeout_s=120).status == "cancelled"
    assert jobs.metrics(new_id)["train_loss"][0][0] == paused.result["step"] + 1


def test_yaml_numbers_without_a_dot_and_the_card_replays_from_scratch(tiny, cli, tmp_path, home):
    spec = tmp_path / "run.yaml"
    spec.write_text("kind: sft\nmodel: base\ndataset: facts\nmethod: lora\noutput_name: sci\nmax_steps: 3\nlearning_rate: 2e-4\n")
    out = cli("train", str(spec), "--wait")
    assert out.returncode == 0, out.stderr
    job = jobs.get(int(out.stdout.strip().splitlines()[-1]))
    assert job.spec["learning_rate"] == 2e-4
    assert "resume_from_job" not in (home / models.find("sci").path / "README.md").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: sft\nmodel: base\ndataset: facts\noutput_name: x\nlearning_rate: fast\n")
    refused = cli("train", str(bad))
    assert refused.returncode == 2 and "bad.yaml: line 5: learning_rate: 'fast': input should be a valid number" in refused.stderr
