"""The Triton model repository export on the tiny scratch model: its layout,
both config.pbtxt files parsed against Triton's own model_config schema (as
shipped in tritonclient) and matched against the ONNX graph, and the text
model's decode loop, loaded from the repository's model.py, giving PyTorch's
greedy text. The Triton side of model.py (TritonPythonModel: BLS calls, the
response sender) runs only inside a Triton server: the deployment issue (12)
starts one on these repositories; until then it is not run here."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import tiny_model
from core.export import registry as exports
from core.export.onnx import OrtDecoder
from core.export.triton_repo import ExportTritonSpec
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.spec import SpecError

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is in requirements-dev.txt")


@pytest.fixture
def base(home, prepared):
    return tiny_model(prepared, "base")


def parse(path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def load_text_model(folder):
    spec = importlib.util.spec_from_file_location("triton_text_generation", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_triton_repository_parses_matches_the_graph_and_generates_pytorchs_text(base, cli, home):
    out = cli("export", "triton", "--model", "base", "--name", "base-triton", "--max-tokens", "12", "--verify-steps", "12",
              "--wait", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    export = json.loads(out.stdout)["export"]
    assert export["format"] == "triton" and export["status"] == "available" and export["verification"]["fp32"]["ok"]
    assert export["details"]["decode_loop"]["tokens"] >= 1 and export["details"]["served"] == "fp32"
    repo = home / "exports" / str(export["id"])
    files = {p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()}
    assert {"README.md", "decoder/config.pbtxt", "decoder/1/model.onnx", "decoder/1/model.onnx.data", "text_generation/config.pbtxt",
            "text_generation/1/model.py", "text_generation/1/tokenizer.json", "text_generation/1/decoding.json"} <= files
    readme = (repo / "README.md").read_text()
    assert "tritonserver --model-repository=/models" in readme and "nvcr.io/nvidia/tritonserver:" in readme

    # the decoder's config: parses, and names, types and fixed dims are the graph's
    decoder = parse(repo / "decoder" / "config.pbtxt")
    assert decoder.name == "decoder" and decoder.backend == "onnxruntime" and decoder.default_model_filename == "model.onnx"
    assert decoder.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    session = OrtDecoder(repo / "decoder" / "1" / "model.onnx").session
    for declared, actual in ((decoder.input, session.get_inputs()), (decoder.output, session.get_outputs())):
        assert [t.name for t in declared] == [t.name for t in actual]
        for tensor, value in zip(declared, actual):
            assert model_config_pb2.DataType.Name(tensor.data_type) == {"tensor(int64)": "TYPE_INT64", "tensor(float)": "TYPE_FP32"}[value.type]
            assert list(tensor.dims) == [d if isinstance(d, int) else -1 for d in value.shape], tensor.name

    # the text model's config: parses, decoupled, calls the decoder
    text = parse(repo / "text_generation" / "config.pbtxt")
    assert text.name == "text_generation" and text.backend == "python" and text.model_transaction_policy.decoupled
    assert text.parameters["decoder_model"].string_value == "decoder"
    assert [t.name for t in text.input] == ["text_input", "max_tokens", "temperature", "seed"]
    assert [t.optional for t in text.input] == [False, True, True, True] and [t.name for t in text.output] == ["text_output"]

    # its model.py, outside Triton, with onnxruntime as the decoder: PyTorch's greedy text, piece by piece
    folder = repo / "text_generation" / "1"
    module = load_text_model(folder)
    names = [o.name for o in session.get_outputs()]
    loop = module.Decoding(folder, lambda feed: dict(zip(names, session.run(names, feed))))
    prompt = "The capital of France is"
    pieces = list(loop.pieces(prompt, 12))
    assert pieces and all(pieces)
    import torch

    from core.inference.generate import eos_ids, load

    model, tokenizer = load(models.find("base"))
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        made = model.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    ends = set(eos_ids(model, tokenizer))
    made = made[: next((i for i, t in enumerate(made) if t in ends), len(made))]
    assert "".join(pieces) == tokenizer.decode(made, skip_special_tokens=True)
    assert len(list(loop.tokens(loop.encode(prompt), 3))) <= 3  # max_tokens holds
    with pytest.raises(ValueError, match="text_input is empty"):
        list(loop.tokens([], 3))


def test_a_quantised_repository_serves_only_its_graph_and_both_at_once_is_refused(base, home):
    with pytest.raises(SpecError, match="int4: a Triton repository serves one graph: choose int8 or int4, not both"):
        ExportTritonSpec(model="base", output_name="t", int8=True, int4=True)
    job = jobs.wait(jobs.submit(ExportTritonSpec(model="base", output_name="t4", int4=True, instance="gpu", verify_steps=4)), timeout_s=300)
    assert job.status == "succeeded", job.log_tail
    row = exports.find("t4")
    graphs = {p.name for p in (home / "exports" / str(row.id) / "decoder" / "1").iterdir()}
    assert graphs == {"model.int4.onnx", "model.int4.onnx.data"}
    decoder = parse(home / "exports" / str(row.id) / "decoder" / "config.pbtxt")
    assert decoder.default_model_filename == "model.int4.onnx"
    assert decoder.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert set(row.verification) == {"fp32", "int4"} and row.details["served"] == "int4"


@pytest.mark.fast
def test_the_text_models_pieces_keep_a_metaspace_tokenizers_spaces(tmp_path):
    """Llama- and Mistral-style tokenizers (Metaspace) drop the space at the start
    of a decoded text: the reply's pieces must still carry it. The decoder here
    is a scripted step (it answers with the next token of a fixed reply), the
    tokenizer a real one trained on the spot; the end token stops the reply."""
    import numpy as np
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from core.export import text_generation

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(["The capital of France is Paris", "Paris is nice, très belle"] * 20,
                                  trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"]))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    end = tokenizer.token_to_id("</s>")
    (tmp_path / "decoding.json").write_text(json.dumps(
        {"layers": 1, "kv_heads": 1, "head_dim": 2, "eos_token_ids": [end], "max_tokens": 50, "context_length": 64}))
    reply = tokenizer.encode("Paris is nice, très belle").ids + [end]
    assert tokenizer.decode(reply[:1]) == "Paris"  # what decoding only the new tokens would send: no space

    def step(feed):
        past = feed["past_key_values.0.key"]
        made = past.shape[2] + feed["input_ids"].shape[1] - len(prompt)  # tokens of the reply so far
        logits = np.zeros((1, feed["input_ids"].shape[1], tokenizer.get_vocab_size()), dtype=np.float32)
        logits[0, -1, reply[made]] = 1.0
        cache = np.zeros((1, 1, past.shape[2] + feed["input_ids"].shape[1], 2), dtype=np.float32)
        return {"logits": logits, "present.0.key": cache, "present.0.value": cache}

    loop = text_generation.Decoding(tmp_path, step)
    prompt = loop.encode("The capital of France is")
    pieces = list(loop.pieces("The capital of France is", 50))
    assert "".join(pieces) == " Paris is nice, très belle" and pieces[0].startswith(" ")
    assert list(loop.tokens(prompt, 50))[-1] == end  # the end token ends it; pieces leave it out
    with pytest.raises(ValueError, match="the prompt is 70 tokens: the model's context is 64"):
        list(loop.tokens([5] * 70, 3))
