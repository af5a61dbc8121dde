"""Fold a LoRA adapter into its base model: a plain full model folder that loads
with `transformers` alone, registered with its lineage.

    python -m core export merge --model ADAPTER --name NAME --wait
"""

from __future__ import annotations

import shutil
from typing import Any, ClassVar

from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.models.weights import describe
from core.spec import Name, Ref, Spec, SpecError
from storage.db import data_home


class MergeAdapterSpec(Spec):
    """Fold a LoRA adapter into its base model: a plain full model."""

    kind: ClassVar[str] = "merge_adapter"
    command: ClassVar[tuple[str, ...]] = ("export", "merge")
    flags: ClassVar[dict[str, str]] = {"output_name": "name"}
    output: ClassVar[str] = "model"
    output_field: ClassVar[str] = "output_name"
    busy: ClassVar[str] = "exporting"
    input_models: ClassVar[tuple[str, ...]] = ("model",)

    model: Ref
    """The adapter: name or id."""
    output_name: Name
    """Name of the merged model."""

    def check_inputs(self) -> None:
        try:
            row = models.find(self.model)
        except models.ModelError:
            return  # a model that is not there is named when the job's inputs are resolved
        if row.source != "adapter" or not row.parent_id:
            raise SpecError("model", f"'{row.name}' is a {row.source} model, not a LoRA adapter: only an adapter merges into its base")
        from core.inference.generate import available

        why = available(row) if row.status == "available" else None
        if why:
            raise SpecError("model", why)

    def model_source(self) -> tuple[str, str]:
        return "trained", f"merge of adapter {self.model}"

    def title(self) -> str:
        return f"Merge adapter '{self.model}' into its base -> '{self.output_name}'"


def run_merge_adapter(spec: MergeAdapterSpec, run: Run) -> dict[str, Any]:
    """Fold a LoRA adapter into its base: a plain full model folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_id, adapter_id = run.model_ids[0], run.model_ids[1]
    adapter = models.get(adapter_id)
    if adapter.source != "adapter" or not adapter.parent_id:
        raise BadInput(f"model: '{adapter.name}' is not a LoRA adapter")
    base = models.get(adapter.parent_id)
    run.progress(0, 3, f"loading '{base.name}' and the adapter", force=True)
    model = AutoModelForCausalLM.from_pretrained(data_home() / base.path, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, data_home() / adapter.path)
    run.check_cancel()
    run.progress(1, 3, "merging", force=True)
    model.eval()
    probe = torch.arange(1, 9).reshape(1, -1) % model.config.vocab_size
    with torch.no_grad():
        before = model(input_ids=probe).logits
        merged = model.merge_and_unload()
        after = merged(input_ids=probe).logits
    diff = float((before - after).abs().max())
    out_dir = models.partial_dir(out_id)
    shutil.rmtree(out_dir, ignore_errors=True)
    run.progress(2, 3, "saving", force=True)
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(data_home() / adapter.path).save_pretrained(out_dir)
    if merged.generation_config is not None:
        merged.generation_config.save_pretrained(out_dir)
    lineage = [*models.lineage(adapter), f"{spec.output_name} (merged)"]
    (out_dir / "README.md").write_text(
        f"# {spec.output_name}\n\nThe LoRA adapter **{adapter.name}** merged into its base **{base.name}**: a plain "
        "model that loads with `transformers` alone (`AutoModelForCausalLM.from_pretrained(folder)`).\n\n"
        f"Lineage: {' -> '.join(lineage)}\n\nLargest logit difference, merged vs base + adapter on a probe: {diff:.2e}\n"
    )
    facts = describe(out_dir, sanity=True)
    facts["details"]["merged_from"] = {"adapter": adapter.name, "base": base.name, "max_abs_logit_diff": diff}
    facts["parent_id"] = adapter.id
    facts["source"] = "trained"
    models.publish(out_id, facts)
    return {"model_id": out_id, "max_abs_logit_diff": diff}
