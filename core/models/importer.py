"""Import a model: a local Hugging Face folder, a local .gguf file, or a Hub id
(online only; offline it fails at once and says so). The weights are saved
back as safetensors with their tokenizer.

    python -m core models import ./some-hf-folder --name mine --wait
    python -m core models import model.gguf --name mine --wait
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pydantic import field_validator

from core.access import paths
from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.models.weights import convert_gguf, describe
from core.spec import Name, Spec, SpecError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# Base models offered as Hub suggestions (they need the network).
HUB_SUGGESTIONS = ["distilgpt2", "gpt2", "microsoft/DialoGPT-small", "facebook/opt-125m", "EleutherAI/gpt-neo-125M"]
GGUF_MAGIC = b"GGUF"


class ImportModelSpec(Spec):
    """Import a local Hugging Face folder, a local .gguf file, or a Hub id."""

    kind: ClassVar[str] = "import_model"
    command: ClassVar[tuple[str, ...]] = ("models", "import")
    positional: ClassVar[tuple[str, ...]] = ("source",)
    output: ClassVar[str] = "model"
    output_field: ClassVar[str] = "name"
    busy: ClassVar[str] = "creating"

    source: str
    """A local folder with config.json, a local .gguf file, or a Hub id like 'gpt2'."""
    name: Name
    """Name of the imported model (unique)."""
    revision: str = ""
    """Hub branch, tag or commit (Hub ids only; default: main)."""

    @field_validator("source")
    @classmethod
    def _where(cls, value: str) -> str:
        value = (value or "").strip()
        if not value:
            raise ValueError("give a folder, a .gguf file or a Hub id")
        if value.startswith((".", "/", "~")) or value.lower().endswith(".gguf"):
            value = str(paths.usable(value, "file" if value.lower().endswith(".gguf") else "dir"))
        elif paths.confined():  # an app visitor's word that is no path: a Hub id (nothing on disk is looked at)
            if not HUB_ID.match(value):
                raise ValueError(f"{value!r} is not a Hub id like 'gpt2' or 'owner/name'; a local path starts with / or ~")
            if Path(value).exists():  # the worker would take it for a folder of its working directory
                raise ValueError(paths.refusal(value))
            return value
        kind = source_kind(value)
        path = Path(value).expanduser().resolve()
        if kind == "folder" and not (path / "config.json").is_file():
            raise ValueError(
                f"{value} has no config.json: give a Hugging Face model folder "
                "(config.json + weights + tokenizer) or a .gguf file"
            )
        if kind == "gguf" and not path.is_file():
            raise ValueError(f"{value} does not exist")
        if kind == "hub":
            if not HUB_ID.match(value):
                raise ValueError(f"{value!r} is neither an existing local path nor a Hub id like 'gpt2' or 'owner/name'")
            return value
        return str(path)  # the worker runs elsewhere: keep the path it can find

    def source_kind(self) -> Literal["folder", "gguf", "hub"]:
        return source_kind(self.source)

    def local_path(self) -> Path:
        return Path(self.source).expanduser().resolve()

    def check_inputs(self) -> None:
        """The files a user points at are read before a job is queued."""
        kind = self.source_kind()
        if kind == "folder":
            config_file = self.local_path() / "config.json"
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise SpecError("source", f"{config_file}: not UTF-8 text") from None
            except json.JSONDecodeError as exc:
                raise SpecError("source", f"{config_file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
            if not isinstance(config, dict) or not config.get("model_type"):
                raise SpecError("source", f"{config_file}: no \"model_type\": not a transformers model config")
        elif kind == "gguf":
            with open(self.local_path(), "rb") as fh:
                if fh.read(4) != GGUF_MAGIC:
                    raise SpecError("source", f"{self.source}: not a GGUF file (it does not start with 'GGUF')")

    def model_source(self) -> tuple[str, str]:
        if self.source_kind() == "hub":
            return "hub", self.source
        return "local", str(self.local_path())

    def title(self) -> str:
        return f"Import '{self.source}' as '{self.name}'"


def source_kind(source: str) -> Literal["folder", "gguf", "hub"]:
    path = Path(source).expanduser()
    if source.lower().endswith(".gguf"):
        return "gguf"
    if path.is_dir():
        return "folder"
    if path.exists() or source.startswith((".", "/", "~")):
        # an existing file that is not .gguf, or a path that does not exist
        raise ValueError(f"{source} is not a model folder or a .gguf file")
    return "hub"


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
