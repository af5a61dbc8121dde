"""A causal LM as one ONNX decoder graph with its KV cache, verified against
PyTorch; the graph run with onnxruntime; the `export_onnx` job kind.

    python -m core export onnx --model NAME --name OUT [--int8] [--int4] [--wait] [--json]

transformers' own exporter (`transformers.exporters.OnnxExporter`: torch.export,
then torch.onnx with its fixes for attention and masks) traces the model on a
left-padded batch with a past, so the attention mask stays in the graph and
every axis is dynamic. Inputs and outputs are then given the names most ONNX
consumers expect:

    input_ids, attention_mask, position_ids     int64  [batch, seq] / [batch, past + seq]
    past_key_values.{i}.key / .value            float  [batch, kv_heads, past, head_dim]
    logits                                      float  [batch, seq, vocab]
    present.{i}.key / .value                    float  [batch, kv_heads, past + seq, head_dim]

The first step feeds a past of length 0. Weights go to `model.onnx.data` beside
the graph (the 2 GB protobuf limit).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional

import numpy as np
from pydantic import Field

from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.spec import Name, Ref, Spec, SpecError

GRAPH = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "position_ids")
# model types whose export is tested (tests/test_export_onnx.py); others are refused before launch
SUPPORTED = ("gpt2", "llama", "mistral", "qwen2")
# each graph's file, by precision; the quantised ones' weight bits
GRAPHS = {"fp32": GRAPH, "int8": "model.int8.onnx", "int4": "model.int4.onnx"}
QUANT_BITS = {"int8": 8, "int4": 4}
# an fp32 graph is within tolerance when its logits are this close to PyTorch's and
# greedy decoding matches; a quantised one when it picks PyTorch's token this often
FP32_MAX_ABS = 1e-3
QUANTISED_AGREEMENT = 0.9


@dataclass(frozen=True)
class CacheShape:
    layers: int
    kv_heads: int
    head_dim: int


def cache_shape(model) -> CacheShape:
    """The KV cache's geometry, read off one forward pass (no config guessing)."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, 2, dtype=torch.long), use_cache=True)
    layers = out.cache.layers
    _, heads, _, dim = layers[0].keys.shape
    return CacheShape(len(layers), int(heads), int(dim))


def positions(mask):
    """Position ids for a left-padded mask: 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _sample(model, shape: CacheShape) -> dict[str, Any]:
    """A left-padded batch of 2 with a past: every size distinct and above 1, so
    torch.export keeps each axis symbolic, and padding in the mask, so the graph
    keeps the mask."""
    import torch
    from transformers import DynamicCache

    batch, seq, past = 2, 3, 5
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    mask[0, :2] = 0
    generator = torch.Generator().manual_seed(0)
    cache = DynamicCache(
        ddp_cache_data=[
            tuple(torch.randn(batch, shape.kv_heads, past, shape.head_dim, generator=generator) for _ in range(2))
            for _ in range(shape.layers)
        ]
    )
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)[:, -seq:], "cache": cache}


_RENAMES = (
    (re.compile(r"^(?:input\.)?cache\.layers\.(\d+)\.keys$"), "past_key_values.{}.key"),
    (re.compile(r"^(?:input\.)?cache\.layers\.(\d+)\.values$"), "past_key_values.{}.value"),
)
_OUT_RENAMES = (
    (re.compile(r"^(?:output\.)?cache\.layers\.(\d+)\.keys$"), "present.{}.key"),
    (re.compile(r"^(?:output\.)?cache\.layers\.(\d+)\.values$"), "present.{}.value"),
)


def _dynamic_shapes(sample: dict[str, Any]) -> Any:
    """Batch and length axes symbolic, the rest fixed: [batch, seq] for the ids
    and the mask, [batch, heads, length, head_dim] with heads and head_dim fixed
    for each cache tensor (so the graph states them, and export is faster)."""
    from torch.export import Dim
    from transformers.exporters.exporter_dynamo import get_auto_dynamic_shapes

    def keep(spec):
        if isinstance(spec, dict) and set(spec) == {0, 1, 2, 3}:
            return {0: Dim.AUTO, 2: Dim.AUTO}
        if isinstance(spec, (list, tuple)):
            return type(spec)(keep(s) for s in spec)
        if isinstance(spec, dict) and all(isinstance(k, str) for k in spec):
            return {k: keep(v) for k, v in spec.items()}
        return spec

    return keep(get_auto_dynamic_shapes(sample))


def _rename(values, rules) -> None:
    for value in values:
        for pattern, template in rules:
            found = pattern.match(value.name)
            if found:
                value.name = template.format(found.group(1))


def io_names(shape: CacheShape) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(shape.layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(shape.layers) for kv in ("key", "value")]
    return [*INPUTS, *past], ["logits", *present]


def export_decoder(model, out_dir: Path, opset: Optional[int] = None) -> dict[str, Any]:
    """Write `out_dir/model.onnx` (+ `.data`) for a causal LM in eval mode, fp32.
    Returns the graph's facts: opset, inputs, outputs, cache geometry."""
    from transformers.exporters import OnnxConfig, OnnxExporter

    shape = cache_shape(model)
    sample = _sample(model, shape)
    program, _ = OnnxExporter().export_program(model, copy.deepcopy(sample), OnnxConfig(dynamic=True, dynamic_shapes=_dynamic_shapes(sample), opset_version=opset))
    graph = program.graph
    _rename(graph.inputs, _RENAMES)
    _rename(graph.outputs, _OUT_RENAMES)
    want_in, want_out = io_names(shape)
    got_in, got_out = [v.name for v in graph.inputs], [v.name for v in graph.outputs]
    if got_in != want_in or got_out != want_out:
        # torch names inputs by position after optimising: a dropped input would shift every name after it
        raise RuntimeError(f"the exported graph's inputs/outputs are {got_in} -> {got_out}, expected {want_in} -> {want_out}")
    out_dir.mkdir(parents=True, exist_ok=True)
    OnnxExporter.save_program(program, out_dir / GRAPH)
    return {
        "opset": int(program.opset_imports.get("", 0)),
        "inputs": want_in,
        "outputs": want_out,
        "layers": shape.layers,
        "kv_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "files": [GRAPH, f"{GRAPH}.data"],
    }


class OrtDecoder:
    """The exported graph in an onnxruntime session: one forward with the cache,
    numpy in and out."""

    def __init__(self, path: Path, threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        past = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.layers = len(past) // 2
        _, self.kv_heads, _, self.head_dim = past[0].shape
        self.dtype = np.float16 if past[0].type == "tensor(float16)" else np.float32

    def empty_past(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.dtype) for _ in range(2 * self.layers)]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: list[np.ndarray]):
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        feed.update({f"past_key_values.{i // 2}.{'key' if i % 2 == 0 else 'value'}": p for i, p in enumerate(past)})
        logits, *present = self.session.run(None, feed)
        return logits, present


# --- quantised graphs ---------------------------------------------------------------------


def quantize(src: Path, precision: str) -> Path:
    """A quantised copy of the fp32 graph beside it: onnxruntime's block-wise
    weight quantisation (MatMulNBits, blocks of 32, symmetric) to 8 bits ("int8")
    or 4 bits ("int4"), with int8 arithmetic on the CPU (accuracy level 4).
    Activations stay float: onnxruntime's dynamic int8 (`quantize_dynamic`, which
    also quantises activations) picked the starter's next token 0-52% of the
    time (bench/README.md, "Export decode"). The output layer is quantised too
    (see `untie_output_layer`)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if precision not in QUANT_BITS:
        raise ValueError(f"no quantisation {precision!r}: {' or '.join(QUANT_BITS)}")
    dst = src.parent / GRAPHS[precision]
    quantizer = MatMulNBitsQuantizer(untie_output_layer(onnx.load(src)), bits=QUANT_BITS[precision], block_size=32,
                                     is_symmetric=True, accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=True)
    return dst


def untie_output_layer(model):
    """A model whose output layer shares the embedding table (tied weights)
    exports as MatMul(x, Transpose(table)): the quantiser skips a MatMul whose
    weight is not an initializer, so the largest matrix of a small model would
    stay fp32. Give such a MatMul the transposed table as its own initializer
    (the Gather keeps the original)."""
    import numpy as np
    from onnx import numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    made_by = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        source = made_by.get(node.input[1]) if node.op_type == "MatMul" else None
        if source is None or source.op_type != "Transpose" or source.input[0] not in initializers:
            continue
        perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), [1, 0])
        if perm != [1, 0]:
            continue
        weight = numpy_helper.to_array(initializers[source.input[0]])
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), name=f"{source.input[0]}.T"))
        node.input[1] = f"{source.input[0]}.T"
    return model


def graph_bytes(path: Path) -> int:
    """A graph's size on disk: the .onnx and its external data."""
    data = path.parent / f"{path.name}.data"
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def judge(precision: str, numbers: dict[str, Any]) -> dict[str, Any]:
    """Whether a graph's verification is within its tolerance, and the tolerance."""
    if precision == "fp32":
        worst = max(numbers["prefill_max_abs"], numbers["padded_max_abs"], numbers["decode_max_abs"])
        ok = worst <= FP32_MAX_ABS and numbers["greedy_match"]
        tolerance = f"max |logit difference| <= {FP32_MAX_ABS:g} and greedy tokens equal"
    else:
        ok = numbers["argmax_agreement"] >= QUANTISED_AGREEMENT
        tolerance = f"argmax agreement >= {QUANTISED_AGREEMENT:.0%}"
    return dict(numbers, ok=bool(ok), tolerance=tolerance, max_abs_logit_diff=max(numbers["prefill_max_abs"], numbers["decode_max_abs"]))


def versions() -> dict[str, str]:
    return {p: metadata.version(p) for p in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")}


# --- the job ------------------------------------------------------------------------------


class ExportOnnxSpec(Spec):
    """Export a model (an adapter is merged into its base) to one ONNX decoder graph
    with its KV cache, verified against PyTorch with onnxruntime; optionally int8
    and 4-bit graphs beside it."""

    kind: ClassVar[str] = "export_onnx"
    command: ClassVar[tuple[str, ...]] = ("export", "onnx")
    flags: ClassVar[dict[str, str]] = {"output_name": "name"}
    output: ClassVar[str] = "export"
    output_field: ClassVar[str] = "output_name"
    export_format: ClassVar[str] = "onnx"
    busy: ClassVar[str] = "exporting"
    input_models: ClassVar[tuple[str, ...]] = ("model",)

    model: Ref
    """The model or adapter to export: name or id."""
    output_name: Name
    """Name of the export."""
    int8: bool = False
    """Also an int8 graph (onnxruntime MatMulNBits: 8-bit weights in blocks of 32): matrices 4x smaller."""
    int4: bool = False
    """Also a 4-bit graph (onnxruntime MatMulNBits: 4-bit weights in blocks of 32): matrices 8x smaller."""
    opset: Optional[int] = Field(None, ge=18, le=23)
    """ONNX opset (empty: the newest the installed exporter writes)."""
    verify_steps: int = Field(20, ge=1, le=512)
    """Greedy tokens compared with PyTorch, with the cache."""

    def precisions(self) -> list[str]:
        return ["fp32"] + [p for p in ("int8", "int4") if getattr(self, p)]

    def check_inputs(self) -> None:
        try:
            row = models.find(self.model)
        except models.ModelError:
            return  # a model that is not there is named when the job's inputs are resolved
        from core.inference.generate import available

        if models.is_reward_model(row):
            raise SpecError("model", f"'{row.name}' is a reward model (a score head): only a causal LM exports as a decoder")
        if row.status == "available":
            why = available(row)
            if why:
                raise SpecError("model", why)
        base = models.get_or_none(row.parent_id) if row.source == "adapter" and row.parent_id else row
        model_type = (base or row).model_type
        if model_type and model_type not in SUPPORTED:
            raise SpecError("model", f"'{row.name}' is a {model_type} model: the ONNX export supports {', '.join(SUPPORTED)}")

    def title(self) -> str:
        extra = "".join(f" + {p}" for p in self.precisions()[1:])
        return f"Export '{self.model}' to ONNX{extra} -> '{self.output_name}'"


def load_for_export(row) -> tuple[Any, Any]:
    """(model, tokenizer) on the CPU in fp32, an adapter merged into its base."""
    from core.inference.generate import load

    model, tokenizer = load(row)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.float().cpu().eval(), tokenizer


def build_steps(spec: ExportOnnxSpec) -> int:
    """The progress steps of `build_onnx`: load, export, quantise and verify each graph, save."""
    return 3 + 2 * len(spec.precisions())


def build_onnx(spec: ExportOnnxSpec, row, out_dir: Path, run: Run, extras: Optional[Path] = None, steps_after: int = 0) -> tuple[dict, dict]:
    """Export, quantise and verify into `out_dir`, the tokenizer, chat template,
    config and generation config into `extras` (default: beside the graphs):
    (facts, verification by precision). Progress counts `steps_after` more
    steps the caller reports after these."""
    import torch

    from core.export.verify import verify
    from core.inference.generate import eos_ids

    extras = extras or out_dir
    total = build_steps(spec) + steps_after
    run.progress(0, total, f"loading '{row.name}'", force=True)
    model, tokenizer = load_for_export(row)
    run.check_cancel()
    run.progress(1, total, "tracing and exporting the decoder (torch.export)", force=True)
    facts = export_decoder(model, out_dir, opset=spec.opset)
    sizes, checks, step = {}, {}, 2
    for precision in spec.precisions():
        run.check_cancel()
        path = out_dir / GRAPHS[precision]
        if precision != "fp32":
            run.progress(step, total, f"quantising to {precision}", force=True)
            quantize(out_dir / GRAPH, precision)
        step += 1
        sizes[precision] = graph_bytes(path)
        run.progress(step, total, f"verifying the {precision} graph against PyTorch", force=True)
        checks[precision] = judge(precision, verify(model, tokenizer, path, steps=spec.verify_steps, threads=torch.get_num_threads()))
        checks[precision]["bytes"] = sizes[precision]
        step += 1
    run.progress(step, total, "saving the tokenizer, chat template and generation config", force=True)
    tokenizer.save_pretrained(extras)
    model.config.save_pretrained(extras)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(extras)
    facts.update(
        graphs={p: GRAPHS[p] for p in spec.precisions()},
        graph_bytes=sizes,
        model=row.name,
        model_type=model.config.model_type,
        lineage=models.lineage(row),
        versions=versions(),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        vocab_size=int(model.config.vocab_size),
        eos_token_ids=sorted(set(eos_ids(model, tokenizer))),
        context_length=getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None),
    )
    return facts, checks


def card(name: str, facts: dict[str, Any], checks: dict[str, Any]) -> str:
    """The export's README: where it came from, its tensors, how it verified, how to run it."""
    lines = [
        f"# {name}", "",
        f"ONNX export of **{facts['model']}** ({facts['model_type']}), opset {facts['opset']}, made by the LLM Development Platform.", "",
        "Lineage: " + " -> ".join(facts["lineage"]), "",
        "## Graphs", "",
        "| precision | file | size | within tolerance | max abs logit diff | greedy match | argmax agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for precision, check in checks.items():
        file = facts["graphs"].get(precision, "(verified; not in this folder)")
        lines.append(
            f"| {precision} | {file} | {check['bytes'] / 1e6:.1f} MB | {'yes' if check['ok'] else 'NO'} "
            f"| {check['max_abs_logit_diff']:.2e} | {check['greedy_match']} | {check['argmax_agreement']:.1%} |"
        )
    lines += [
        "", "## Tensors", "",
        "- `input_ids`, `attention_mask`, `position_ids`: int64 `[batch, sequence]` (`attention_mask`: `[batch, past + sequence]`)",
        f"- `past_key_values.{{0..{facts['layers'] - 1}}}.key/value`: float32 `[batch, {facts['kv_heads']}, past, {facts['head_dim']}]` (past 0 at the first step)",
        "- `logits`: float32 `[batch, sequence, vocab]`; `present.{i}.key/value`: the cache after this step",
        "", "## Run it", "",
        "```python",
        "import numpy as np, onnxruntime as ort",
        "from transformers import AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained('.')",
        "session = ort.InferenceSession('model.onnx')",
        "```",
        "", "Versions: " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items()), "",
    ]
    return "\n".join(lines)


def run_export_onnx(spec: ExportOnnxSpec, run: Run) -> dict[str, Any]:
    """Export, quantise, verify and register the ONNX folder."""
    import shutil

    from core.export import registry as exports

    export = exports.for_job(run.job_id)
    row = models.get(run.model_ids[0])
    out_dir = exports.partial_dir(export.id)
    shutil.rmtree(out_dir, ignore_errors=True)
    with exportable(row):
        facts, checks = build_onnx(spec, row, out_dir, run)
    (out_dir / "README.md").write_text(card(export.name, facts, checks))
    exports.publish(export.id, run.job_id, {"details": facts, "verification": checks})
    return {"export_id": export.id, "verification": {p: summary(c) for p, c in checks.items()}}


@contextmanager
def exportable(row) -> Iterator[None]:
    """A model the exporter cannot trace fails the job as bad input, naming it."""
    try:
        yield
    except (RuntimeError, ValueError) as exc:
        if "torch.export" in str(exc) or "exported graph" in str(exc) or "Unsupported" in str(exc):
            raise BadInput(f"model: '{row.name}' does not export: {exc}") from exc
        raise


def summary(check: dict[str, Any]) -> dict[str, Any]:
    """The verification numbers a job's result shows (the export keeps them all)."""
    keys = ("ok", "max_abs_logit_diff", "greedy_match", "argmax_agreement", "torch_tokens_per_s", "onnx_tokens_per_s", "bytes")
    return {k: check[k] for k in keys}
