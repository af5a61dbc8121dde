"""A ready-to-copy model repository for NVIDIA Triton Inference Server; the
`export_triton` job kind.

    python -m core export triton --model NAME --name OUT [--int8 | --int4] [--instance cpu|gpu] [--wait] [--json]

The repository holds two models:

    decoder/config.pbtxt             onnxruntime backend: the ONNX decoder with its KV cache
    decoder/1/model.onnx (+ .data)   the verified graph (fp32, or the int8 / 4-bit one asked for)
    text_generation/config.pbtxt     Python backend, decoupled: text in, text pieces out
    text_generation/1/model.py       the decode loop (core/export/text_generation.py), BLS into `decoder`
    text_generation/1/tokenizer.json ... and decoding.json, the loop's facts
    README.md                        the `tritonserver` command, the container, a request

The graph is exported and verified as an ONNX export is (core/export/onnx.py);
then the decode loop itself, `model.py`'s own code with onnxruntime standing in
for the BLS call, must produce the graph's greedy tokens, or the job fails.
The folder is never called `triton` (it would shadow the `triton` package).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from core.export import text_generation
from core.export.onnx import GRAPHS, ExportOnnxSpec, OrtDecoder, build_onnx, build_steps, card, exportable, summary
from core.jobs.run import Run
from core.models import registry as models
from core.spec import SpecError

DECODER = "decoder"
TEXT_MODEL = "text_generation"
# the official container the README names (Triton 2.69; later monthly releases read the same config)
CONTAINER = "nvcr.io/nvidia/tritonserver:26.05-py3"


class ExportTritonSpec(ExportOnnxSpec):
    """Export a model (an adapter is merged into its base) as a Triton model
    repository: the verified ONNX decoder for the onnxruntime backend and a
    streaming text-generation model (Python backend) that calls it."""

    kind: ClassVar[str] = "export_triton"
    command: ClassVar[tuple[str, ...]] = ("export", "triton")
    export_format: ClassVar[str] = "triton"

    int8: bool = False
    """Serve the int8 graph (8-bit weights, onnxruntime MatMulNBits) instead of fp32."""
    int4: bool = False
    """Serve the 4-bit graph (4-bit weights, onnxruntime MatMulNBits) instead of fp32."""
    instance: Literal["cpu", "gpu"] = "cpu"
    """Where Triton runs the decoder: cpu, or gpu (CUDA, onnxruntime's CUDA provider)."""
    max_tokens: int = Field(128, ge=1, le=8192)
    """New tokens per request unless the request says otherwise."""

    @model_validator(mode="after")
    def _one_graph(self) -> "ExportTritonSpec":
        if self.int8 and self.int4:
            raise SpecError("int4", "a Triton repository serves one graph: choose int8 or int4, not both")
        return self

    def served(self) -> str:
        """The precision of the graph the repository serves."""
        return self.precisions()[-1]

    def title(self) -> str:
        return f"Export '{self.model}' as a Triton repository ({self.served()}) -> '{self.output_name}'"


# --- config.pbtxt ------------------------------------------------------------------------------


def _tensor(name: str, data_type: str, dims: list[int], optional: bool = False) -> str:
    extra = " optional: true" if optional else ""
    return f'  {{ name: "{name}" data_type: {data_type} dims: [ {", ".join(str(d) for d in dims)} ]{extra} }}'


def _tensors(key: str, tensors: list[str]) -> str:
    return f"{key} [\n" + ",\n".join(tensors) + "\n]"


def decoder_config(facts: dict[str, Any], graph: str, instance: str) -> str:
    """The onnxruntime-backend config of the decoder: every tensor named and typed,
    -1 where the axis is dynamic (batch, sequence, past), the rest fixed."""
    cache = [-1, facts["kv_heads"], -1, facts["head_dim"]]
    inputs = [_tensor(n, "TYPE_INT64", [-1, -1]) for n in ("input_ids", "attention_mask", "position_ids")]
    inputs += [_tensor(n, "TYPE_FP32", cache) for n in facts["inputs"][3:]]
    outputs = [_tensor("logits", "TYPE_FP32", [-1, -1, facts["vocab_size"]])]
    outputs += [_tensor(n, "TYPE_FP32", cache) for n in facts["outputs"][1:]]
    return "\n".join([
        f'name: "{DECODER}"',
        'backend: "onnxruntime"',
        f'default_model_filename: "{graph}"',
        "max_batch_size: 0",
        _tensors("input", inputs),
        _tensors("output", outputs),
        f"instance_group [ {{ count: 1 kind: KIND_{instance.upper()} }} ]",
        "",
    ])


def text_config() -> str:
    """The Python-backend config of the text model: decoupled (a response per
    piece of text), the decoder it calls named as a parameter."""
    return "\n".join([
        f'name: "{TEXT_MODEL}"',
        'backend: "python"',
        "max_batch_size: 0",
        "model_transaction_policy { decoupled: true }",
        _tensors("input", [
            _tensor("text_input", "TYPE_STRING", [1]),
            _tensor("max_tokens", "TYPE_INT32", [1], optional=True),
            _tensor("temperature", "TYPE_FP32", [1], optional=True),
            _tensor("seed", "TYPE_INT64", [1], optional=True),
        ]),
        _tensors("output", [_tensor("text_output", "TYPE_STRING", [1])]),
        f'parameters: {{ key: "decoder_model" value: {{ string_value: "{DECODER}" }} }}',
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
        "",
    ])


def readme(name: str, facts: dict[str, Any], checks: dict[str, Any], served: str, instance: str) -> str:
    """The repository's README: what is in it, how it verified, how to serve and call it."""
    onnx_card = card(name, facts, checks).split("## Graphs", 1)[1].split("## Run it", 1)[0]
    gpus = " --gpus all" if instance == "gpu" else ""
    return "\n".join([
        f"# {name}",
        "",
        f"NVIDIA Triton Inference Server model repository for **{facts['model']}** ({facts['model_type']}), "
        f"made by the LLM Development Platform. Lineage: " + " -> ".join(facts["lineage"]),
        "",
        f"- `{DECODER}`: the ONNX decoder with its KV cache ({served}, opset {facts['opset']}), onnxruntime backend, on the {instance.upper()}.",
        f"- `{TEXT_MODEL}`: text in, text out, streamed (Python backend, decoupled). It tokenises, runs the decode loop "
        f"with BLS calls into `{DECODER}` and sends each new piece of text. Raw text: apply the chat template client-side.",
        "",
        "## Serve it",
        "",
        f"The official container ({CONTAINER}: Triton 2.69; later releases read the same configuration). "
        "The text model needs the `tokenizers` package in the container's Python; the decoder's cache and logits "
        "pass through shared memory on every step, so give the container more than Docker's 64 MB:",
        "",
        "```bash",
        f"docker run --rm{gpus} --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$PWD\":/models {CONTAINER} \\",
        "  bash -c 'pip install tokenizers && tritonserver --model-repository=/models'",
        "```",
        "",
        "## Call it",
        "",
        "```bash",
        f"curl -N -X POST localhost:8000/v2/models/{TEXT_MODEL}/generate_stream \\",
        "  -d '{\"text_input\": \"The capital of France is\", \"max_tokens\": 32}'",
        "```",
        "",
        "Optional inputs: `max_tokens` (INT32, default "
        f"{facts['max_tokens']}), `temperature` (FP32, 0 = greedy), `seed` (INT64). gRPC clients stream with "
        "`tritonclient.grpc` (`start_stream`, `async_stream_infer`); a plain HTTP `infer` on a decoupled model is refused by Triton.",
        "",
        "## Verification",
        "",
        f"The graph was run with onnxruntime beside PyTorch; the decode loop of `{TEXT_MODEL}/1/model.py` gave the graph's greedy tokens "
        f"({facts['decode_loop']['tokens']} tokens).",
        *([] if checks[served]["ok"] else [
            "",
            f"**The served {served} graph is OUTSIDE its tolerance** ({checks[served]['tolerance']}: argmax agreement "
            f"{checks[served]['argmax_agreement']:.1%}): it does not compute what the model does. Export fp32 or int8 to serve the model itself.",
        ]),
        "",
        "## Graphs" + onnx_card,
        "Versions: " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items()),
        "",
    ])


# --- the job -----------------------------------------------------------------------------------


def check_decode_loop(folder: Path, graph: Path, prompt: list[int], expected: list[int]) -> dict[str, Any]:
    """Run the text model's own decode loop with onnxruntime as the decoder: its
    greedy tokens must be the graph's (`expected`, up to the first end token)."""
    ort = OrtDecoder(graph)
    outputs = [o.name for o in ort.session.get_outputs()]

    def step(feed: dict) -> dict:
        return dict(zip(outputs, ort.session.run(outputs, feed)))

    loop = text_generation.Decoding(folder, step)
    got = list(loop.tokens(prompt, len(expected)))
    want = expected[: len(got)]
    if got != want:
        raise RuntimeError(f"the text model's decode loop gave {got}, the graph's greedy decoding {want}")
    return {"tokens": len(got), "greedy_tokens": got}


def run_export_triton(spec: ExportTritonSpec, run: Run) -> dict[str, Any]:
    """Export and verify the graph, lay out the repository, check its decode loop, register it."""
    from core.export import registry as exports
    from core.export.verify import PROMPTS

    export = exports.for_job(run.job_id)
    row = models.get(run.model_ids[0])
    repo = exports.partial_dir(export.id)
    shutil.rmtree(repo, ignore_errors=True)
    graphs, text_dir = repo / DECODER / "1", repo / TEXT_MODEL / "1"
    with exportable(row):
        facts, checks = build_onnx(spec, row, graphs, run, extras=text_dir, steps_after=1)
    served = spec.served()
    for precision, graph in GRAPHS.items():  # only the served graph stays
        if precision != served:
            for path in (graphs / graph, graphs / f"{graph}.data"):
                path.unlink(missing_ok=True)
    facts["graphs"] = {served: GRAPHS[served]}
    facts["files"] = [f"{DECODER}/1/{p.name}" for p in sorted(graphs.iterdir())]
    facts["max_tokens"] = spec.max_tokens
    (text_dir / "decoding.json").write_text(json.dumps({
        k: facts[k] for k in ("layers", "kv_heads", "head_dim", "eos_token_ids", "max_tokens", "context_length")
    }, indent=2))
    shutil.copyfile(text_generation.__file__, text_dir / "model.py")
    from transformers import AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(text_dir)(PROMPTS[0], add_special_tokens=False)["input_ids"]
    run.progress(build_steps(spec), build_steps(spec) + 1, "checking the text model's decode loop on the graph", force=True)
    facts["decode_loop"] = check_decode_loop(text_dir, graphs / GRAPHS[served], prompt, checks[served]["greedy_tokens_onnx"])
    (repo / DECODER / "config.pbtxt").write_text(decoder_config(facts, GRAPHS[served], spec.instance))
    (repo / TEXT_MODEL / "config.pbtxt").write_text(text_config())
    facts.update(served=served, instance=spec.instance, container=CONTAINER, models=[DECODER, TEXT_MODEL])
    (repo / "README.md").write_text(readme(export.name, facts, checks, served, spec.instance))
    exports.publish(export.id, run.job_id, {"details": facts, "verification": checks})
    return {"export_id": export.id, "verification": {p: summary(c) for p, c in checks.items()}}
