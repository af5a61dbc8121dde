"""Every job kind in one table: kind -> its spec class and the function that runs it.

A kind is one file: its spec (a `core.spec.Spec` whose fields say what it takes
and whose traits say what it is) and `run_<kind>(spec, run) -> dict`. Adding a
kind = that file + one line below + the page section that shows it; the CLI
command, the replay command, the YAML, the form defaults, the queue, DDP,
resume and the registries all follow from the spec.

Importing this loads no torch, transformers or TRL: the run functions import
them when they are called (in the job process).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from core.data.importer import ImportDatasetSpec, run_import_dataset
from core.evaluation.generation import EvalGenerationSpec, run_eval_generation
from core.evaluation.judge import EvalJudgeSpec, run_eval_judge
from core.evaluation.lm_eval import EvalLmEvalSpec, run_eval_lm_eval
from core.evaluation.perplexity import EvalPerplexitySpec, run_eval_perplexity
from core.evaluation.reward import EvalRewardSpec, run_eval_reward
from core.export.merge import MergeAdapterSpec, run_merge_adapter
from core.export.onnx import ExportOnnxSpec, run_export_onnx
from core.export.triton_repo import ExportTritonSpec, run_export_triton
from core.jobs.run import Run
from core.models.create import CreateModelSpec, run_create_model
from core.models.importer import ImportModelSpec, run_import_model
from core.models.starter import AddStarterSpec, run_add_starter
from core.serving.service import ServeSpec, run_serve
from core.serving.triton_deploy import DeployTritonSpec, run_deploy_triton
from core.spec import Spec, SpecError
from core.training.dpo import DPOSpec, run_dpo
from core.training.grpo import GRPOSpec, run_grpo
from core.training.ppo import PPOSpec, run_ppo
from core.training.reward import RewardSpec, run_reward
from core.training.sft import SFTSpec, run_sft


class Kind(NamedTuple):
    spec: type[Spec]
    run: Callable[[Any, Run], dict]


KINDS: dict[str, Kind] = {
    k.spec.kind: k
    for k in (
        Kind(CreateModelSpec, run_create_model),
        Kind(AddStarterSpec, run_add_starter),
        Kind(ImportModelSpec, run_import_model),
        Kind(ImportDatasetSpec, run_import_dataset),
        Kind(SFTSpec, run_sft),
        Kind(RewardSpec, run_reward),
        Kind(DPOSpec, run_dpo),
        Kind(GRPOSpec, run_grpo),
        Kind(PPOSpec, run_ppo),
        Kind(MergeAdapterSpec, run_merge_adapter),
        Kind(ExportOnnxSpec, run_export_onnx),
        Kind(ExportTritonSpec, run_export_triton),
        Kind(EvalPerplexitySpec, run_eval_perplexity),
        Kind(EvalGenerationSpec, run_eval_generation),
        Kind(EvalJudgeSpec, run_eval_judge),
        Kind(EvalLmEvalSpec, run_eval_lm_eval),
        Kind(EvalRewardSpec, run_eval_reward),
        Kind(ServeSpec, run_serve),
        Kind(DeployTritonSpec, run_deploy_triton),
    )
}


def spec_class(kind: str) -> type[Spec]:
    if not kind:
        raise SpecError("kind", f"say which job this is: kind: one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise SpecError("kind", f"unknown job kind {kind!r}: one of {', '.join(KINDS)}")
    return KINDS[kind].spec


def spec_from_dict(data: dict[str, Any]) -> Spec:
    """A spec from spec.json, a YAML file or the jobs table; `kind` selects the class."""
    data = dict(data)
    return spec_class(data.pop("kind", None))(**data)


def traits(kind: str) -> type[Spec]:
    """What a job of this kind is, to read its traits (`.trains`, `.busy`, ...). A
    kind this version lacks (a database shared with another version) reads as the
    base Spec: it trains not, takes a slot, and is "in use"."""
    return KINDS[kind].spec if kind in KINDS else Spec
