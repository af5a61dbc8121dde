"""RLHF page pieces: the pipeline at a glance, the new-run form of each alignment
kind (its fields from the spec), the rollouts of a run, the score box."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pandas as pd
import streamlit as st

from core.access import accounts
from core.data import registry as datasets
from core.evaluation import results as samples_store
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.kinds import KINDS, spec_class, traits
from core.spec import Spec, SpecError
from core.training.grpo import GRPOSpec
from ui import access, common, data, forms

SPECS: dict[str, type[Spec]] = {kind: spec_class(kind) for kind in KINDS if traits(kind).aligns}
LABELS = {kind: cls.aligns for kind, cls in SPECS.items()}
PRESET_LABELS = {"quick": "Quick try (CPU, minutes)", "standard": "Standard"}
# shown by the form itself; the rest of a kind's fields go under Advanced
SHOWN = {
    "model", "dataset", "output_name", "method", "max_steps", "learning_rate", "batch_size", "beta", "loss_type",
    "reward_model", "target_length", "format_regex", "contains", "avoids", "match", "reward_file", "reward_weights",
    "num_generations", "max_completion_length", "response_length", "kl_coef", "resume_from_job", "processes", "threads",
}
EQUAL_REWARDS_WARNING = 0.5
"""Warn when more than this share of a GRPO run's recent groups had all rewards equal."""


def alignment_kinds() -> set[str]:
    return set(SPECS)


def pipeline() -> None:
    """Where the user stands: what exists for each step of the pipeline."""
    rows = [m for m in models.list_models() if m.status == "available"]
    data = [d for d in datasets.list_datasets() if d.status == "available"]
    c = st.columns(4)
    c[0].metric("Policies (language models)", sum(not models.is_reward_model(m) for m in rows))
    c[1].metric("Reward models", sum(models.is_reward_model(m) for m in rows))
    c[2].metric("Preference data sets", sum(d.format == "preference" for d in data))
    c[3].metric("Prompt data sets", sum(d.format == "prompt" for d in data))
    st.caption(
        "SFT (Training page) → **reward model** → PPO · SFT → **DPO** (preference pairs) · SFT → **GRPO** "
        "(prompts + rule, model or your own reward functions). Each run is a job: live charts, pause and resume, "
        "a replayable spec."
    )


def spec_form() -> Optional[Spec]:
    """The new-run form (no st.form: the YAML below follows every change)."""
    kind = st.radio("Method", list(SPECS), format_func=LABELS.get, horizontal=True, key="rl_kind")
    cls = SPECS[kind]
    preset = st.radio("Preset", list(PRESET_LABELS), format_func=PRESET_LABELS.get, horizontal=True, key="rl_preset")
    p = cls.presets[preset]

    def f(name: str, label: str, where: Any = st, **kw: Any) -> Any:
        key = f"rl_{kind}_{name}" + (f"_{preset}" if name in p else "")  # a preset's default needs its own key
        if name in p:
            kw.setdefault("default", p[name])
        return forms.field(cls, name, label, key=key, where=where, **kw)

    all_models = [m for m in models.list_models() if m.status == "available"]
    policies = [m.name for m in all_models if not models.is_reward_model(m)]
    rewarders = [m.name for m in all_models if models.is_reward_model(m)]
    data = [d.name for d in datasets.list_datasets() if d.status == "available" and d.format in cls.dataset_formats]
    if not policies or not data:
        st.info(f"{LABELS[kind]} needs a model (Models page) and a {' or '.join(cls.dataset_formats)} data set (Datasets page).")
        return None
    c1, c2, c3 = st.columns(3)
    start_label = "Start from (its body gets a score head)" if kind == "reward" else "Starting policy"
    model = c1.selectbox(start_label, policies, key=f"rl_{kind}_model", help=cls.doc("model"))
    dataset = c2.selectbox("Data set", data, key=f"rl_{kind}_dataset", help=cls.doc("dataset"))
    values: dict[str, Any] = {"model": model, "dataset": dataset, "method": f("method", "Method", c3, horizontal=True)}
    c = st.columns(4)
    # the key follows the starting model: a keyed input would keep a stale default
    values["output_name"] = forms.field(cls, "output_name", "Output name", key=f"rl_{kind}_output_{model}", where=c[0],
                                        default=f"{model}-{kind}"[:90])
    values["max_steps"] = f("max_steps", "Max steps (0 = epochs)", c[1])
    values["learning_rate"] = f("learning_rate", "Learning rate (0 = the kind's default)", c[2], format="%.1e")
    values["batch_size"] = f("batch_size", "Batch size", c[3])
    if kind == "dpo":
        c = st.columns(2)
        values["beta"] = f("beta", "Beta", c[0])
        values["loss_type"] = f("loss_type", "Loss", c[1])
    if kind == "grpo":
        values.update(_grpo_rewards(f, rewarders, dataset))
    if kind == "ppo":
        if not rewarders:
            st.info("PPO needs a reward model: train one first (Method: Reward model), from the same policy or its base.")
            return None
        c = st.columns(3)
        values["reward_model"] = c[0].selectbox("Reward model", rewarders, key="rl_ppo_reward_model", help=cls.doc("reward_model"))
        values["response_length"] = f("response_length", "Max answer tokens", c[1])
        values["kl_coef"] = f("kl_coef", "KL coefficient", c[2])
    with st.expander("Advanced"):
        rest = [n for n in cls.field_names() if n not in SHOWN and cls.base_type(n) not in (list, dict)]
        cols = st.columns(4)
        for i, name in enumerate(rest):
            values[name] = f(name, name.replace("_", " ").capitalize(), cols[i % 4])
    try:
        spec = cls(**values)
    except SpecError as exc:
        st.session_state.pop("_try_reward_file", None)
        st.error(forms.page_words(str(exc)))
        return None
    if st.session_state.pop("_try_reward_file", False):
        _try_file(spec)
    with st.expander("Copy to reproduce: the command, or the spec file", expanded=False):
        st.code(spec.replay() + " --wait", language="bash")
        st.caption("Or save this as `run.yaml` and run `python -m core run run.yaml --wait`:")
        st.code(spec.to_yaml(), language="yaml")
    return spec


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def _grpo_rewards(f, rewarders: list[str], dataset: str) -> dict[str, Any]:
    """GRPO's reward functions, several at once, each with a weight."""
    st.markdown("**Rewards** (several at once; each answer's reward is the weighted sum)")
    c = st.columns(3)
    values: dict[str, Any] = {
        "reward_model": c[0].selectbox("Reward model", ["", *rewarders], format_func=lambda n: n or "(none)",
                                       key="rl_grpo_reward_model", help=GRPOSpec.doc("reward_model")),
        "target_length": f("target_length", "Target length (tokens, 0 = off)", c[1]),
        "format_regex": f("format_regex", "Format: regular expression", c[2]),
        "contains": _words(c[0].text_input("Contains keywords (comma-separated)", key="rl_grpo_contains", help=GRPOSpec.doc("contains"))),
        "avoids": _words(c[1].text_input("Avoids keywords (comma-separated)", key="rl_grpo_avoids", help=GRPOSpec.doc("avoids"))),
        "match": f("match", "Match the answer column", c[2], format_func=lambda m: m or "(off)"),
        "reward_file": c[0].text_input("Your reward file (a .py path on this machine)", key="rl_grpo_reward_file",
                                       help=GRPOSpec.doc("reward_file") + " " + common.PATHS_HELP),
    }
    uploaded = c[1].file_uploader("…or upload it", type=["py"], key="rl_grpo_reward_upload", disabled=not access.can_run(),
                                  help="Kept in the data home (uploads/code), where the app may read it.")
    if uploaded is not None:
        if st.session_state.get("_reward_upload_id") != uploaded.file_id:
            st.session_state["_reward_upload_id"] = uploaded.file_id
            st.session_state["_reward_upload_path"] = str(data.save_upload(uploaded, "code"))
        values["reward_file"] = st.session_state["_reward_upload_path"]
        c[1].caption(f"Using the upload: `{Path(values['reward_file']).name}`")
    if values["reward_file"] and c[2].button("Try it on 3 rows", key="rlhf_try_file", disabled=not access.can_run(),
                                             help="The policy answers 3 prompts of the data set; your file scores them, "
                                                  "called exactly as in a run (confined, as in a run)."):
        st.session_state["_try_reward_file"] = True  # tried below, on the whole form's spec
    c = st.columns(3)
    values["num_generations"] = f("num_generations", "Answers per prompt", c[0])
    values["max_completion_length"] = f("max_completion_length", "Max answer tokens", c[1])
    on = [n for n, v in (("length", values["target_length"]), ("format", values["format_regex"]), ("contains", values["contains"]),
                         ("avoids", values["avoids"]), ("match", values["match"]), ("file", values["reward_file"]),
                         ("model", values["reward_model"])) if v]
    weights = {}
    if len(on) > 1:
        cols = st.columns(len(on))
        for col, name in zip(cols, on):
            weight = col.number_input(f"Weight: {name}", value=1.0, step=0.1, key=f"rl_grpo_weight_{name}")
            if weight != 1.0:
                weights[name] = weight
    values["reward_weights"] = weights
    return values


def _try_file(spec: GRPOSpec) -> None:
    """The policy answers 3 prompts of the data set and the user's file scores them,
    called as in a run (core/training/grpo.py try_rewards), in a separate process."""
    from core.training import grpo

    try:
        with st.spinner("The policy answers 3 prompts, your file scores them (confined, as in a run)…"):
            out = grpo.try_in_subprocess(spec, by=access.actor())
    except accounts.Denied as exc:
        st.error(str(exc))
        return
    if "error" in out:
        st.error(f"Your reward file fails: {out['error']}")
        return
    st.dataframe(pd.DataFrame(out["rows"]), hide_index=True)
    st.caption("The answers are the policy's own (its sampling settings), as a run's first step would see them. "
               "Your function gets: " + "; ".join(f"**{k}**: {v}" for k, v in out["types"].items()))


def rollouts(job) -> None:
    """A PPO or GRPO run's rollouts, browsable by step; the 'nothing to learn' warning."""
    if "frac_equal_rewards" in {n for _, names in traits(job.kind).panels for n in names}:
        recent = [v for _, v in (jobs.metrics(job.id).get("frac_equal_rewards") or [])][-5:]
        if recent and sum(recent) / len(recent) > EQUAL_REWARDS_WARNING:
            st.warning(
                f"In {sum(recent) / len(recent):.0%} of the recent groups every answer got the same reward: GRPO learns "
                "nothing from them. Make the reward finer-grained (add a length or format reward, a reward model), raise "
                "the temperature or the answers per prompt.", icon=":material/warning:",
            )
    steps = [s for s in samples_store.sample_steps(job.id) if s is not None]
    if not steps:
        return
    st.subheader("Rollouts")
    step = st.select_slider("Step", steps, value=steps[-1], key=f"rl_rollout_step_{job.id}") if len(steps) > 1 else steps[0]
    rows = samples_store.samples(job.id, step)
    table = pd.DataFrame([{"prompt": r["prompt"], "answer": r["output"], **r["scores"]} for r in rows])
    st.dataframe(table, hide_index=True, width="stretch")
    st.caption(f"{len(rows)} of the answers written at step {step} and their rewards ({len(steps)} steps kept).")


def before_after(job) -> None:
    """The same prompts answered by the starting policy and by the aligned one,
    each scored by a reward model, side by side (two reward evaluations)."""
    from core.evaluation import reward as reward_eval

    made = (job.result or {}).get("model_id")
    if job.status != "succeeded" or not made or models.is_reward_model(models.get(made)):
        return  # a reward model scores answers; it writes none
    st.subheader("Before and after")
    judges: dict[str, dict[str, Any]] = {}
    if traits(job.kind).reward_functions:
        judges["this run's own rewards"] = {"rewards_from": job.id}
    own = str((job.spec or {}).get("reward_model") or "")
    for m in sorted((m for m in models.list_models() if m.status == "available" and models.is_reward_model(m)),
                    key=lambda m: (m.name != own and str(m.id) != own, m.name)):
        judges[m.name] = {"reward_model": m.name, "id": m.id}
    if not judges:
        st.caption("Train a reward model to score the starting policy and this one on the same prompts.")
        return
    c = st.columns([2, 1, 2])
    judge = judges[c[0].selectbox("Scored by", list(judges), key=f"rl_ba_rm_{job.id}")]
    n = c[1].number_input("Prompts", min_value=1, max_value=200, value=8, key=f"rl_ba_n_{job.id}")
    which = dict(reward_model_id=judge.get("id"), rewards_from=judge.get("rewards_from", 0))
    running = reward_eval.before_after_jobs(job, **which, status=tuple(jobs.ACTIVE))
    if c[2].button("Answer them with both and score", key=f"rlhf_ba_{job.id}", disabled=running is not None or not access.can_run()):
        try:
            specs = reward_eval.before_after_specs(job, int(n), judge.get("reward_model", ""), judge.get("rewards_from", 0))
            ids = [jobs.submit(spec, by=access.actor()) for spec in specs]
            st.toast(f"Scoring both policies: jobs {ids[0]} and {ids[1]}")
        except (SpecError, ValueError) as exc:
            st.error(forms.page_words(str(exc)))
    pair = reward_eval.before_after_jobs(job, **which)
    if pair is None:
        st.caption("Not scored yet this way." if running is None else "Scoring… (the jobs panel shows their progress)")
        return
    before, after = pair
    m = st.columns(2)
    m[0].metric(f"Before: {before.result.get('model')}", f"{before.result['metrics']['mean_reward']:.3f}")
    m[1].metric(f"After: {after.result.get('model')}", f"{after.result['metrics']['mean_reward']:.3f}",
                delta=f"{after.result['metrics']['mean_reward'] - before.result['metrics']['mean_reward']:+.3f}")
    rows = samples_store.paired(before.id, after.id)
    st.dataframe(pd.DataFrame([
        {"prompt": r["prompt"], "before": r["a"]["output"], "reward before": r["a"]["scores"].get("reward"),
         "after": r["b"]["output"], "reward after": r["b"]["scores"].get("reward")} for r in rows
    ]), hide_index=True, width="stretch")
    st.caption(f"Mean reward by {before.result.get('reward_model')} of jobs {before.id} and {after.id} (Evaluation page: all results).")


@st.cache_resource(max_entries=1, show_spinner=False)
def _reward_model(model_id: int, path: str):
    from core.inference import reward

    return reward.load(models.get(model_id))


def score_box() -> None:
    """Rate any answer with a registered reward model (loaded in the app, kept for the next)."""
    from core.inference import reward

    rewarders = [m for m in models.list_models() if m.status == "available" and models.is_reward_model(m)]
    if not rewarders:
        st.info("No reward model yet: train one (New run → Reward model) on a preference data set.")
        return
    by_name = {m.name: m for m in rewarders}
    name = st.selectbox("Reward model", list(by_name), key="rl_score_model")
    prompt = st.text_area("Prompt", key="rl_score_prompt", height=80)
    response = st.text_area("Answer", key="rl_score_response", height=120)
    if st.button("Score", key="rlhf_score", disabled=not (prompt and response) or not access.can_run()):
        row = by_name[name]
        with st.spinner(f"Loading '{name}'…"):
            model, tokenizer = _reward_model(row.id, row.path)
        value = reward.score(model, tokenizer, [(prompt, response)])[0]
        st.metric("Score", f"{value:.3f}")
        st.caption(f"The same from a terminal: `python -m core score --reward-model '{name}' --prompt ... --response ...`")
