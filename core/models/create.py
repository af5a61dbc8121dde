"""Create a new, randomly initialised model from a config, with a byte-level BPE
tokenizer trained on a local corpus: what the tests use, seconds on a CPU.

    python -m core models create --arch gpt2 --size tiny --name my-tiny --wait

The job writes a plain Hugging Face folder (safetensors + tokenizer + chat
template) into models/<id>.partial and publishes it as models/<id>, so every
later step loads it with `from_pretrained(folder)`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from core.access import paths
from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.models.weights import describe
from core.spec import Name, Spec, SpecError

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "assets" / "corpus.txt"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# ChatML, the format the starter model uses too.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Size presets: (layers, hidden size, heads, context, vocab).
SIZE_PRESETS: dict[str, dict[str, int]] = {
    # a few layers, built in about a second: what the tests use
    "tiny": dict(n_layer=2, hidden_size=64, n_head=4, context_length=256, vocab_size=1024),
    # tens of millions of parameters (~25M for gpt2, ~28M for llama)
    "small": dict(n_layer=6, hidden_size=512, n_head=8, context_length=512, vocab_size=8192),
}
LIGHT_PARAMETERS = 30_000_000
"""Scratch models up to this many parameters (about) run in the light lane."""
DIMS = ("n_layer", "hidden_size", "n_head", "context_length", "vocab_size")


class CreateModelSpec(Spec):
    """Create a new, randomly initialised model from a config, with a fresh tokenizer."""

    kind: ClassVar[str] = "create_model"
    command: ClassVar[tuple[str, ...]] = ("models", "create")
    output: ClassVar[str] = "model"
    output_field: ClassVar[str] = "name"
    busy: ClassVar[str] = "creating"

    name: Name
    """Name of the new model (unique)."""
    arch: Literal["gpt2", "llama"] = "gpt2"
    """Architecture family."""
    size: Literal["tiny", "small", "custom"] = "tiny"
    """Size preset; explicit dims below override it ("custom" needs all of them)."""
    n_layer: Optional[int] = Field(None, ge=1, le=64)
    """Number of transformer layers."""
    hidden_size: Optional[int] = Field(None, ge=8, le=8192)
    """Width of the residual stream (embedding size)."""
    n_head: Optional[int] = Field(None, ge=1, le=128)
    """Attention heads; must divide hidden_size."""
    context_length: Optional[int] = Field(None, ge=16, le=32768)
    """Maximum sequence length in tokens."""
    vocab_size: Optional[int] = Field(None, ge=300, le=200_000)
    """Target size of the byte-level BPE vocabulary trained on the corpus."""
    corpus: str = ""
    """Text file the tokenizer is trained on (default: assets/corpus.txt)."""
    seed: int = Field(0, ge=0)
    """Random seed for the weights."""

    @field_validator("corpus")
    @classmethod
    def _corpus_file(cls, value: str) -> str:
        if not value:
            return value
        path = paths.usable(value, "file")  # in the app: an upload or a file under an allowed root
        if not path.is_file():
            raise ValueError(f"{value} is not a file: give a UTF-8 text file")
        return str(path.resolve())  # the worker runs elsewhere: keep the path it can find

    @model_validator(mode="after")
    def _dims_fit(self) -> "CreateModelSpec":
        dims = self.dims()
        for key in DIMS:
            if dims.get(key) is None:
                raise SpecError(key, f"size 'custom' needs {key}")
        if dims["hidden_size"] % dims["n_head"]:
            raise SpecError("n_head", f"{dims['n_head']} heads do not divide hidden_size {dims['hidden_size']}")
        return self

    def dims(self) -> dict[str, Optional[int]]:
        """The preset's dims with explicit ones applied on top."""
        dims: dict[str, Optional[int]] = dict(SIZE_PRESETS.get(self.size, {}))
        for key in DIMS:
            if getattr(self, key) is not None:
                dims[key] = getattr(self, key)
        return dims

    def corpus_path(self) -> Path:
        return Path(self.corpus) if self.corpus else DEFAULT_CORPUS

    def check_inputs(self) -> None:
        try:
            self.corpus_path().read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            line = self.corpus_path().read_bytes()[: exc.start].count(b"\n") + 1
            raise SpecError("corpus", f"{self.corpus_path()}: line {line}: not UTF-8 text") from None

    def model_source(self) -> tuple[str, str]:
        return "scratch", f"{self.arch}/{self.size}"

    def is_light(self) -> bool:
        """Up to a few tens of millions of parameters ('small'): built in seconds."""
        d = self.dims()
        return 12 * d["n_layer"] * d["hidden_size"] ** 2 + d["vocab_size"] * d["hidden_size"] <= LIGHT_PARAMETERS

    def title(self) -> str:
        return f"Create {self.arch} ({self.size}) model '{self.name}'"


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
