"""A causal LM as one ONNX decoder graph with its KV cache, and that graph run
with onnxruntime.

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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

GRAPH = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "position_ids")


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
