"""Model folders: facts for the registry read from a saved folder, and GGUF
files converted into one. Used by every job that writes a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.jobs.run import BadInput, Run

SANITY_PROMPT = "What is the capital of France?"
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64"}


def convert_gguf(gguf: Path, out: Path, run: Run, done: int, total: int) -> None:
    """Dequantise a GGUF file into a float32 safetensors folder with its tokenizer
    (three progress steps, after `done` of `total`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    run.progress(done, total, f"reading the tokenizer from {gguf.name}", force=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, OSError, KeyError) as exc:
        raise BadInput(f"{gguf}: not a GGUF model transformers can read ({exc})") from None
    run.check_cancel()
    run.progress(done + 1, total, "dequantising the weights to float32 (about half a minute)", force=True)
    # dequantize=True: without it save_pretrained refuses a GGUF-loaded model.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    run.check_cancel()
    run.progress(done + 2, total, "saving safetensors and tokenizer", force=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _drop_quantization_config(out)


def _drop_quantization_config(folder: Path) -> None:
    """The saved config still says 'gguf quantized'; the weights are plain float32."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.pop("quantization_config", None) is not None:
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def describe(folder: Path, sanity: bool = False) -> dict[str, Any]:
    """Facts for the registry, read from a saved folder (and, with sanity=True,
    a real reload plus a short greedy answer to a test question)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    n_params, dtypes = 0, set()
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            for key in st.keys():
                sl = st.get_slice(key)
                shape = sl.get_shape()
                numel = 1
                for dim in shape:
                    numel *= dim
                n_params += numel
                dtypes.add(SAFETENSORS_DTYPES.get(str(sl.get_dtype()), str(sl.get_dtype()).lower()))
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    details: dict[str, Any] = {
        "tokenizer": type(tokenizer).__name__,
        "special_tokens": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "attention_heads": getattr(config, "num_attention_heads", None),
    }
    if sanity:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.eval()
        if tokenizer.chat_template:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": SANITY_PROMPT}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
        else:
            ids = tokenizer(SANITY_PROMPT, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits
            if not torch.isfinite(logits).all():
                raise RuntimeError("the saved model produces non-finite logits")
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            gen = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=pad)
        details["sample_prompt"] = SANITY_PROMPT
        details["sample"] = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()
    return {
        "architecture": (config.architectures or [type(config).__name__])[0],
        "model_type": config.model_type,
        "num_parameters": n_params,
        "context_length": context,
        "dtype": ",".join(sorted(dtypes)) or None,
        "vocab_size": getattr(config, "vocab_size", None),
        "has_chat_template": bool(tokenizer.chat_template),
        "details": details,
    }


def describe_adapter(folder: Path, base) -> dict[str, Any]:
    """Facts for a LoRA adapter: the base's shape, the adapter's own size."""
    from safetensors import safe_open

    cfg = json.loads((folder / "adapter_config.json").read_text())
    n = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(f, framework="pt") as st:
            for key in st.keys():
                shape = st.get_slice(key).get_shape()
                count = 1
                for d in shape:
                    count *= d
                n += count
    return {
        "architecture": base.architecture,
        "model_type": base.model_type,
        "num_parameters": n,
        "context_length": base.context_length,
        "dtype": "float32",
        "vocab_size": base.vocab_size,
        "has_chat_template": base.has_chat_template,
        "details": {
            "adapter": "LoRA",
            "lora_r": cfg.get("r"),
            "lora_alpha": cfg.get("lora_alpha"),
            "target_modules": cfg.get("target_modules"),
            "base_parameters": base.num_parameters,
        },
    }
