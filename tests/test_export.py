"""Export jobs end to end on the tiny scratch model: an ONNX export (fp32, int8,
4-bit) from the command line with its verification in the JSON record and the
registry, an adapter exported merged, and the refusals before launch."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import tiny_model, wait_for
from core.data.importer import ImportDatasetSpec
from core.export import registry as exports
from core.export.onnx import ExportOnnxSpec
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec
from core.spec import SpecError
from core.training.sft import SFTSpec


@pytest.fixture
def base(home, prepared):
    return tiny_model(prepared, "base")


def test_onnx_export_from_the_command_line_is_verified_and_registered(base, cli, home):
    out = cli("export", "onnx", "--model", "base", "--name", "base-onnx", "--int8", "--int4", "--verify-steps", "20", "--wait", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["status"] == "succeeded"
    export = record["export"]
    assert export["format"] == "onnx" and export["model"] == "base" and export["status"] == "available"
    fp32, int8, int4 = (export["verification"][p] for p in ("fp32", "int8", "int4"))
    assert fp32["ok"] and fp32["max_abs_logit_diff"] < 1e-4 and fp32["greedy_match"] and fp32["argmax_agreement"] == 1.0
    assert len(fp32["greedy_tokens_onnx"]) == 20
    for quantised in (int8, int4):  # reported, whatever they are
        assert 0.0 <= quantised["argmax_agreement"] <= 1.0 and quantised["max_abs_logit_diff"] > 0
        assert quantised["onnx_tokens_per_s"] > 0 and "argmax agreement" in quantised["tolerance"]
    sizes = export["details"]["graph_bytes"]
    assert sizes["int8"] < sizes["fp32"] and record["verification"]["int8"]["bytes"] == sizes["int8"]
    folder = home / "exports" / str(export["id"])
    names = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "model.onnx.data", "model.int8.onnx", "model.int4.onnx", "config.json", "generation_config.json",
            "tokenizer.json", "README.md"} <= names
    assert export["size_bytes"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    details = export["details"]
    assert details["opset"] >= 18 and details["lineage"][-1].startswith("base (scratch") and details["versions"]["onnxruntime"]
    assert "| fp32 | model.onnx |" in (folder / "README.md").read_text()
    assert not (home / "exports" / f"{export['id']}.partial").exists()

    listed = cli("export", "list")
    assert listed.returncode == 0 and "base-onnx" in listed.stdout and "fp32 ok" in listed.stdout
    # the archive holds the folder under the export's name
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(exports.archive(exports.find("base-onnx")))) as tar:
        assert "base-onnx/model.onnx" in tar.getnames()
    # a name is taken until the export is deleted
    with pytest.raises(SpecError, match="output_name: an export named 'base-onnx' already exists"):
        jobs.submit(ExportOnnxSpec(model="base", output_name="base-onnx"))
    assert cli("export", "delete", "base-onnx", "--yes").returncode == 0
    assert exports.list_exports() == [] and not folder.exists()


def test_an_adapter_exports_merged_and_a_missing_base_is_refused(base, home, tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(8)))
    assert jobs.wait(jobs.submit(ImportDatasetSpec(path=str(path), name="facts")), timeout_s=120).status == "succeeded"
    trained = jobs.wait(jobs.submit(SFTSpec(model="base", dataset="facts", output_name="adapter", method="lora", max_steps=3,
                                           learning_rate=5e-2)), timeout_s=300)
    assert trained.status == "succeeded", trained.log_tail
    job = jobs.wait(jobs.submit(ExportOnnxSpec(model="adapter", output_name="adapter-onnx", verify_steps=8)), timeout_s=300)
    assert job.status == "succeeded", job.log_tail
    row = exports.find("adapter-onnx")
    assert exports.within_tolerance(row) and row.model_id == models.find("adapter").id
    assert row.details["lineage"][0].startswith("base") and row.details["lineage"][-1].startswith("adapter")
    # the export stands alone: its model can go, it stays
    models.delete(models.find("base").id)
    with pytest.raises(SpecError, match="model: 'adapter' is an adapter whose base model was deleted"):
        jobs.submit(ExportOnnxSpec(model="adapter", output_name="again"))
    assert exports.find("adapter-onnx").status == "available"


def test_refusals_before_launch(base, home, tmp_path):
    # a model still training (its output row exists, its job is queued)
    queued = jobs.submit(CreateModelSpec(name="growing", arch="gpt2", size="tiny"), start=False)
    with pytest.raises(SpecError, match="model: model 'growing' is creating, not available"):
        jobs.submit(ExportOnnxSpec(model="growing", output_name="g"))
    jobs.cancel(queued)
    # an architecture the exporter does not support: a tiny OPT model imported from a folder
    from transformers import OPTConfig, OPTForCausalLM

    from core.models.importer import ImportModelSpec

    folder = tmp_path / "opt"
    OPTForCausalLM(OPTConfig(vocab_size=models.find("base").vocab_size, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                             max_position_embeddings=64, word_embed_proj_dim=16)).save_pretrained(folder)
    shutil.copytree(home / models.find("base").path, folder, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("config.json", "*.safetensors", "generation_config.json"))
    imported = jobs.wait(jobs.submit(ImportModelSpec(source=str(folder), name="opt")), timeout_s=120)
    assert imported.status == "succeeded", imported.log_tail
    with pytest.raises(SpecError, match="model: 'opt' is a opt model: the ONNX export supports gpt2, llama"):
        jobs.submit(ExportOnnxSpec(model="opt", output_name="o"))
    with pytest.raises(SpecError, match="model: there is no model 'nope'"):
        jobs.submit(ExportOnnxSpec(model="nope", output_name="o"))
    with pytest.raises(SpecError, match="opset: 9"):
        ExportOnnxSpec(model="base", output_name="o", opset=9)
    assert exports.list_exports() == []


def test_a_cancelled_export_leaves_nothing(base, home):
    job_id = jobs.submit(ExportOnnxSpec(model="base", output_name="stopped", int8=True))
    export_id = exports.find("stopped").id
    wait_for(lambda: jobs.get(job_id).status == "running" and jobs.get(job_id).progress_step >= 1, timeout=120, what="export running")
    jobs.cancel(job_id)
    assert jobs.wait(job_id, timeout_s=120).status == "cancelled"
    assert exports.list_exports() == []
    assert not (home / "exports" / str(export_id)).exists() and not (home / "exports" / f"{export_id}.partial").exists()
    # the name is free again
    assert jobs.wait(jobs.submit(ExportOnnxSpec(model="base", output_name="stopped", verify_steps=4)), timeout_s=300).status == "succeeded"
