"""Proximal policy optimisation against a reward model (the RLHF of InstructGPT):
the policy answers the prompts of a prompt data set, a registered reward model
scores the answers, and TRL's PPOTrainer moves the policy towards higher scores
while a KL penalty keeps it near the starting policy; a value model (started
from the reward model) learns what to expect.

    python -m core train ppo --model SFT_MODEL --reward-model RM --dataset PROMPTS --output-name OUT --max-steps 10 --wait

TRL 1.12.0 is pinned because it is the last release with PPO: this is the only
module that imports `trl.experimental.ppo`. Its trainer has no resume, so this
job does it: each checkpoint also keeps the value model, and a resumed run loads
the policy, the value model, the optimizer and the schedule from it and counts
on from its step (the prompts are drawn afresh). Requirements checked before launch: the reward model reads the policy's
tokenizer (the token ids go straight from one to the other) and the padding
token differs from EOS (PPO measures an answer up to its first padding token).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from core.data import registry as datasets
from core.data.render import prompt_example
from core.jobs.run import BadInput, Run, store_samples
from core.models import registry as models
from core.spec import Ref, SpecError
from core.training.common import (
    TrainSpec, checkpoint_of, last_logged, load_model, make_callback, register, reproduce, result, save_policy, stopped,
    trainer_args, write_run_record,
)
from storage.db import data_home

LOGGED = {
    "objective/rlhf_reward": "reward",
    "objective/scores": "score",
    "objective/kl": "kl",
    "objective/entropy": "entropy",
    "objective/non_score_reward": "kl_penalty",
    "loss/policy_avg": "policy_loss",
    "loss/value_avg": "value_loss",
    "policy/approxkl_avg": "approx_kl",
    "policy/clipfrac_avg": "clip_fraction",
    "val/clipfrac_avg": "value_clip_fraction",
    "val/num_eos_tokens": "answers_ended",
    "lr": "learning_rate",
}
ROLLOUTS_PER_STEP = 8
PAD_CANDIDATES = ("<|pad|>", "[PAD]", "<pad>", "<|endoftext|>", "</s>")


class PPOSpec(TrainSpec):
    """PPO of a policy on a prompt data set against a registered reward model (TRL PPOTrainer)."""

    kind: ClassVar[str] = "ppo"
    command: ClassVar[tuple[str, ...]] = ("train", "ppo")
    aligns: ClassVar[str] = "PPO (prompts + a reward model)"
    input_models: ClassVar[tuple[str, ...]] = ("model", "reward_model")
    dataset_formats: ClassVar[tuple[str, ...]] = ("prompt",)
    logged: ClassVar[dict[str, str]] = LOGGED
    panels: ClassVar[list[tuple[str, tuple[str, ...]]]] = [
        ("Reward (score minus KL penalty)", ("reward", "score")),
        ("KL to the reference", ("kl",)),
        ("Entropy", ("entropy",)),
        ("Policy loss", ("policy_loss",)),
        ("Value loss", ("value_loss",)),
        ("Answer length (tokens)", ("response_length",)),
        ("Clip fraction", ("clip_fraction", "value_clip_fraction")),
        ("Answers that ended (EOS)", ("answers_ended",)),
    ]
    default_lr: ClassVar[tuple[float, float]] = (3e-6, 3e-5)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(max_steps=10, batch_size=4, response_length=32, num_ppo_epochs=2, save_steps=5),
        "standard": dict(max_steps=0, epochs=1.0, batch_size=8, response_length=128, num_ppo_epochs=4, save_steps=50),
    }

    model: Ref = Field(description="Policy to start from (often an SFT output; a LoRA adapter trains on as itself): name or id.")
    dataset: Ref = Field(description="Prompt data set: name or id.")
    reward_model: Ref = Field(description="Reward model that scores the answers (it must read the policy's tokenizer): name or id.")
    batch_size: int = Field(4, ge=1, le=4096, description="Prompts answered per device per step.")
    response_length: int = Field(48, ge=1, le=32768)
    """Answers stop after this many tokens (or at EOS)."""
    temperature: float = Field(0.7, gt=0, le=5)
    """Sampling temperature of the answers."""
    kl_coef: float = Field(0.05, ge=0, le=10)
    """KL penalty towards the starting policy, per token."""
    num_ppo_epochs: int = Field(4, ge=1, le=100)
    """Passes over each batch of answers."""
    num_mini_batches: int = Field(1, ge=1, le=1024)
    """Mini-batches each batch is split into (must divide batch_size x grad_accum)."""
    cliprange: float = Field(0.2, gt=0, le=1)
    """How far one update may move a token's probability ratio."""
    vf_coef: float = Field(0.1, ge=0, le=10)
    """Weight of the value model's loss."""
    missing_eos_penalty: float = Field(1.0, ge=0, le=100)
    """Taken off the score of an answer that did not end (0: none)."""
    pad_token: str = ""
    """Padding token (it must differ from EOS); empty: the tokenizer's, or an unused special token."""

    def check_inputs(self) -> None:
        super().check_inputs()
        try:
            policy, rm = models.find(self.model), models.find(self.reward_model)
        except models.ModelError:
            return  # named when the job's inputs are resolved
        if models.is_reward_model(policy):
            raise SpecError("model", f"'{policy.name}' is a reward model: PPO trains a policy (a language model)")
        if not models.is_reward_model(rm):
            raise SpecError("reward_model", f"'{rm.name}' is not a reward model (train one: python -m core train reward)")
        if (self.batch_size * self.grad_accum) % self.num_mini_batches:
            raise SpecError("num_mini_batches", f"{self.num_mini_batches} does not divide batch_size x grad_accum "
                                                f"({self.batch_size * self.grad_accum})")
        mine, theirs = vocabulary(data_home() / policy.path), vocabulary(data_home() / rm.path)
        if mine != theirs:
            raise SpecError(
                "reward_model", f"'{rm.name}' reads another tokenizer than '{policy.name}' ({len(theirs)} vs {len(mine)} "
                f"tokens): PPO hands the policy's token ids to the reward model; train the reward model from "
                f"'{policy.name}' or its base"
            )
        pad_token(self, data_home() / policy.path)

    def title(self) -> str:
        return f"PPO {self.method} of '{self.model}' on '{self.dataset}' against '{self.reward_model}' -> '{self.output_name}'"


def vocabulary(folder: Path) -> dict[str, int]:
    """A saved tokenizer's token -> id (added tokens included), from its files."""
    data = json.loads((folder / "tokenizer.json").read_text()) if (folder / "tokenizer.json").is_file() else {}
    vocab = dict((data.get("model") or {}).get("vocab") or {})
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens") or []})
    return vocab


def pad_token(spec: PPOSpec, folder: Path) -> str:
    """The padding token PPO uses: the spec's, the tokenizer's when it is not EOS,
    or an unused special token; SpecError when there is none."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    token = lambda name: (config.get(name) or {}).get("content") if isinstance(config.get(name), dict) else config.get(name)  # noqa: E731
    eos, vocab = token("eos_token"), vocabulary(folder)
    template = (folder / "chat_template.jinja").read_text() if (folder / "chat_template.jinja").is_file() else str(config.get("chat_template") or "")
    in_prompts = {eos, token("bos_token")} | {t for t in vocab if t.startswith("<") and t in template}
    if spec.pad_token:
        if spec.pad_token not in vocab:
            raise SpecError("pad_token", f"{spec.pad_token!r} is not a token of '{spec.model}'")
        if spec.pad_token in in_prompts:
            raise SpecError("pad_token", f"{spec.pad_token!r} is EOS, BOS or part of the chat template: PPO would cut answers at it")
        return spec.pad_token
    for candidate in (token("pad_token"), token("unk_token"), *PAD_CANDIDATES):
        if candidate and candidate in vocab and candidate not in in_prompts:
            return candidate
    raise SpecError("pad_token", f"the tokenizer of '{spec.model}' pads with EOS ({eos!r}) and has no other special token "
                                 "to pad with: set pad_token to a token of its vocabulary that prompts never contain")


class _Stop(Exception):
    """Raised from a callback: TRL's PPO loop does not look at should_training_stop."""


def _restore(spec: PPOSpec, policy, checkpoint: Path):
    """The policy's weights and the value model of a checkpoint this job wrote."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    if spec.method != "full":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(policy, load_file(checkpoint / "adapter_model.safetensors"))
    else:
        policy.load_state_dict(load_file(checkpoint / "model.safetensors"), strict=False)  # tied weights are saved once
    return AutoModelForSequenceClassification.from_pretrained(checkpoint / "value_model")


def run_ppo(spec: PPOSpec, run: Run) -> dict[str, Any]:
    import copy

    import torch
    import trl.experimental.ppo.ppo_trainer as ppo_trainer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from core.hardware import device as current_device

    start, rm_row = models.get(run.model_ids[1]), models.get(run.model_ids[2])
    data_row = datasets.get(run.dataset_ids[0])
    if data_row.format != "prompt":  # checked at submit; the row may have been replaced since
        raise BadInput(f"dataset: '{data_row.name}' is {data_row.format} data; PPO needs prompt data")
    device = current_device()
    torch.manual_seed(spec.seed)
    run.progress(0, None, f"loading '{start.name}' ({spec.method}), the reward model '{rm_row.name}' and a value model", force=True)

    tokenizer = AutoTokenizer.from_pretrained(data_home() / start.path, padding_side="left")
    tokenizer.pad_token = pad_token(spec, data_home() / start.path)
    print(f"padding with {tokenizer.pad_token!r} (EOS is {tokenizer.eos_token!r})", flush=True)

    def encode(row):
        prompt = prompt_example(row["prompt"], tokenizer)
        if isinstance(prompt, list):
            return {"input_ids": tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]}
        return {"input_ids": tokenizer(prompt)["input_ids"]}

    train = datasets.load(data_row)["train"]
    train = train.map(encode, remove_columns=train.column_names, keep_in_memory=True)
    policy = load_model(spec, start, device)
    # the reference: the starting policy, frozen (an adapter merged into its base)
    reference = copy.deepcopy(policy)
    reference = (reference.merge_and_unload() if spec.method != "full" else reference).eval().requires_grad_(False)
    reward_model = AutoModelForSequenceClassification.from_pretrained(data_home() / rm_row.path, num_labels=1, dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(data_home() / rm_row.path, num_labels=1, dtype=torch.float32)
    resume = checkpoint_of(spec.resume_from_job) if spec.resume_from_job else None
    done = json.loads((resume / "trainer_state.json").read_text())["global_step"] if resume else 0
    if resume:
        print(f"resuming from {resume} (step {done})", flush=True)
        value_model = _restore(spec, policy, resume)
    for m in (reward_model, value_model):
        m.config.pad_token_id = tokenizer.pad_token_id
    run.check_cancel()

    common = trainer_args(spec, run, device)
    common.pop("max_steps")  # PPO counts episodes (answers), not steps
    args = PPOConfig(
        **common,
        total_episodes=spec.max_steps * spec.batch_size * spec.grad_accum * run.world_size if spec.max_steps else None,
        response_length=spec.response_length,
        temperature=spec.temperature,
        kl_coef=spec.kl_coef,
        num_ppo_epochs=spec.num_ppo_epochs,
        num_mini_batches=spec.num_mini_batches,
        cliprange=spec.cliprange,
        vf_coef=spec.vf_coef,
        missing_eos_penalty=spec.missing_eos_penalty or None,
        stop_token="eos",
        local_rollout_forward_batch_size=spec.batch_size,
        num_sample_generations=0,
    )
    callback = make_callback(run, spec.logged)
    rollouts: list[dict[str, Any]] = []
    scored = ppo_trainer.get_reward

    def get_reward(model, query_responses, pad_token_id, context_length):
        """TRL's scoring, recording each rollout the reward model scores."""
        out = scored(model, query_responses, pad_token_id, context_length)
        if model is reward_model and len(rollouts) < ROLLOUTS_PER_STEP:
            answers = query_responses[:, context_length:]
            for query, answer, value in zip(query_responses[:, :context_length], answers, out[1].tolist()):
                length = int((answer != pad_token_id).sum())
                rollouts.append({
                    "prompt": tokenizer.decode(query, skip_special_tokens=True).strip(),
                    "output": tokenizer.decode(answer[:length], skip_special_tokens=True),
                    "scores": {"reward_model": value}, "extra": {"tokens": length},
                })
        return out

    class Continue(TrainerCallback):
        """A resumed run counts on from its step (TRL's loop starts at 0)."""

        def on_train_begin(self, args, state, control, **kw):
            state.global_step, state.episode = done, done * args.batch_size

    class Stop(TrainerCallback):
        """What else TRL's PPO loop lacks: stopping when asked (after the
        progress callback has seen the request), ending a resumed run where the
        schedule ends, and a value model in every checkpoint."""

        def on_step_end(self, args, state, control, **kw):
            if callback.stopped_at is not None and not callback.pause:
                raise _Stop()  # a pause stops after its checkpoint (on_save)
            if done and state.global_step >= state.max_steps:
                raise _Stop()  # a resumed run has fewer updates left than the loop makes

        def on_save(self, args, state, control, **kw):
            value_model.save_pretrained(Path(args.output_dir) / f"checkpoint-{state.global_step}" / "value_model")
            if callback.stopped_at is not None:
                raise _Stop()

    class Rollouts(TrainerCallback):
        """Each step's rollouts and answer length to the database."""

        def on_log(self, args, state, control, logs=None, **kw):
            if rollouts and run.is_main:
                store_samples(run.job_id, state.global_step, [dict(r, idx=i) for i, r in enumerate(rollouts)])
                run.metrics(state.global_step, {"response_length": sum(r["extra"]["tokens"] for r in rollouts) / len(rollouts)})
            rollouts.clear()

    ppo_trainer.get_reward = get_reward  # TRL calls it by its module name
    try:
        trainer = PPOTrainer(
            args=args, processing_class=tokenizer, model=policy, ref_model=reference, reward_model=reward_model,
            value_model=value_model, train_dataset=train, callbacks=[Continue(), callback, Stop(), Rollouts()],
        )
        if resume:  # the optimizer (the value model's state too) and where the schedule stood
            trainer.optimizer.load_state_dict(torch.load(resume / "optimizer.pt", map_location="cpu", weights_only=True))
            trainer.lr_scheduler.load_state_dict(torch.load(resume / "scheduler.pt", map_location="cpu", weights_only=True))
        if run.is_main:
            write_run_record(run, spec, trainer, start, data_row)
        print(f"rank {run.rank} of {run.world_size} training on {device}", flush=True)
        began = time.perf_counter()
        try:
            trainer.train()
        except _Stop:
            pass
        runtime = time.perf_counter() - began
    finally:
        ppo_trainer.get_reward = scored
    stopped(callback, run)
    if not run.is_main:
        return {}
    trainer.model = trainer.model.policy  # save the policy, not the value model beside it
    facts = save_policy(spec, run, trainer, tokenizer, start)
    history = trainer.state.log_history
    final = last_logged(history, "objective/scores")
    facts["details"].update(reward_model={"id": rm_row.id, "name": rm_row.name}, kl_coef=spec.kl_coef, final_score=final)
    register(spec, run, trainer, facts, start, data_row, model_card(spec, start, rm_row, data_row, trainer, run.job_id))
    return {**result(run, trainer, None), "train_runtime_s": runtime, "final_score": final, "reward_model": rm_row.name}


def model_card(spec: PPOSpec, start, rm_row, data_row, trainer, job_id: int) -> str:
    kind = "LoRA adapter" if spec.method != "full" else "full model"
    return (
        f"# {spec.output_name}\n\n"
        f"A {kind} aligned with PPO from **{start.name}** against the reward model **{rm_row.name}** on the prompt data set "
        f"**{data_row.name}** (fingerprint `{data_row.fingerprint}`) by job {job_id} of the LLM Development Platform.\n\n"
        f"- updates: {trainer.state.global_step}; final mean score: {last_logged(trainer.state.log_history, 'objective/scores')}; "
        f"KL coefficient {spec.kl_coef}\n"
        f"- learning rate {spec.lr()}, batch {spec.batch_size} x {spec.grad_accum}, {spec.num_ppo_epochs} PPO epochs, "
        f"answers up to {spec.response_length} tokens at temperature {spec.temperature}, seed {spec.seed}\n"
        + reproduce(spec)
    )
