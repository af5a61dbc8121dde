"""ONNX export with the KV cache: tiny GPT-2, Llama (one with grouped KV heads,
as the starter has), Mistral and Qwen2 models built from a config, exported,
and run with onnxruntime next to PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from core.export.onnx import GRAPH, SUPPORTED, OrtDecoder, cache_shape, export_decoder, io_names
from core.export.verify import verify
from core.models.create import DEFAULT_CORPUS, CreateModelSpec, build_config, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DEFAULT_CORPUS, 1024)


def tiny(arch: str, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    if arch in ("mistral", "qwen2"):  # the other families the export supports, at the tiny llama's size
        from transformers import AutoConfig

        llama = build_config(CreateModelSpec(name="t", arch="llama", size="tiny"), tokenizer).to_dict()
        keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")
        config = AutoConfig.for_model(arch, **{k: llama[k] for k in keep}, num_key_value_heads=2)
    else:
        config = build_config(CreateModelSpec(name="t", arch="gpt2" if arch == "gpt2" else "llama", size="tiny"), tokenizer)
    if arch == "llama-gqa":
        config.num_key_value_heads = 2  # 4 query heads share 2 KV heads
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama-gqa", "mistral", "qwen2"])
def test_onnx_export_with_kv_cache_computes_what_pytorch_does(arch, tokenizer, tmp_path):
    model = tiny(arch, tokenizer)
    facts = export_decoder(model, tmp_path)
    shape = cache_shape(model)
    assert (tmp_path / GRAPH).exists() and (tmp_path / f"{GRAPH}.data").exists()
    assert (facts["inputs"], facts["outputs"]) == io_names(shape)
    assert facts["inputs"][:5] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key", "past_key_values.0.value"]
    assert facts["outputs"][:3] == ["logits", "present.0.key", "present.0.value"] and facts["opset"] >= 18
    assert shape.kv_heads == (4 if arch in ("gpt2", "llama") else 2)
    assert model.config.model_type in SUPPORTED

    result = verify(model, tokenizer, tmp_path / GRAPH, steps=20)
    assert result["prefill_max_abs"] < 1e-4, result
    assert result["padded_max_abs"] < 1e-4, result  # a left-padded batch of two
    assert result["decode_max_abs"] < 1e-4, result  # a step with each side's own cache
    assert result["greedy_match"] and len(result["greedy_tokens_onnx"]) == 20, result
    assert result["argmax_agreement"] == 1.0, result
    assert result["torch_tokens_per_s"] > 0 and result["onnx_tokens_per_s"] > 0


def test_the_graph_takes_any_batch_and_length(tokenizer, tmp_path):
    """Dynamic axes: a batch of 3 and a prompt of 7, then a decode step of 1 (the
    export was traced on a batch of 2, 3 new tokens and a past of 5)."""
    import torch

    model = tiny("llama", tokenizer)
    export_decoder(model, tmp_path)
    ort = OrtDecoder(tmp_path / GRAPH)
    ids = np.arange(21, dtype=np.int64).reshape(3, 7) + 10
    mask = np.ones_like(ids)
    pos = np.tile(np.arange(7, dtype=np.int64), (3, 1))
    logits, present = ort(ids, mask, pos, ort.empty_past(3))
    assert logits.shape == (3, 7, model.config.vocab_size) and present[0].shape[2] == 7
    step, _ = ort(ids[:, -1:], np.ones((3, 8), dtype=np.int64), np.full((3, 1), 7, dtype=np.int64), present)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(np.concatenate([ids, ids[:, -1:]], 1))).logits[:, -1].numpy()
    assert np.abs(step[:, -1] - want).max() < 1e-4
