"""Alignment end to end on the tiny scratch model: reward models (and scoring
with them), DPO, GRPO and PPO, each a real TRL run on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from core.data.importer import ImportDatasetSpec
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec
from core.spec import SpecError
from core.training.reward import RewardSpec

# A preference set a tiny model separates at once: the chosen answer agrees, the rejected one refuses.
TOPICS = ["the sky", "a river", "the moon", "a song", "the sea", "a tree", "the wind", "a book", "the sun", "a cat"]
PAIRS = [(f"Tell me about {t}.", f"Yes, {t} is lovely.", "No. No. No.") for t in TOPICS]


@pytest.fixture
def prefs(home, tmp_path, prepared):
    """The tiny llama base and a preference set (40 rows, 8 of them for validation)."""
    def build():
        base = jobs.wait(jobs.submit(CreateModelSpec(name="base", arch="llama", size="tiny")), timeout_s=120)
        assert base.status == "succeeded", base.log_tail
        path = tmp_path / "prefs.jsonl"
        path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS * 4))
        data = jobs.wait(jobs.submit(ImportDatasetSpec(path=str(path), name="prefs", format="preference",
                                                       validation_fraction=0.2)), timeout_s=120)
        assert data.status == "succeeded", data.log_tail

    prepared("alignment-base-prefs", build)
    return models.find("base")


def reward_model(name: str = "rm", **overrides) -> "jobs.Job":
    args = dict(model="base", dataset="prefs", output_name=name, method="full", max_steps=30, batch_size=4,
                learning_rate=1e-3, eval_steps=10, save_steps=100)
    job = jobs.wait(jobs.submit(RewardSpec(**{**args, **overrides})), timeout_s=300)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    return job


def test_reward_model_learns_to_rank_and_scores_like_its_trainer(prefs, home):
    from core.data import registry as datasets
    from core.inference import reward

    job = reward_model()
    metrics = jobs.metrics(job.id)
    for name in ("train_loss", "eval_loss", "accuracy", "eval_accuracy", "margin", "eval_margin", "mean_score"):
        assert metrics.get(name), f"{name} was not recorded"
    accuracy = metrics["eval_accuracy"][-1][1]
    assert accuracy >= 0.9  # chance is 0.5
    rm = models.find("rm")
    assert models.is_reward_model(rm) and rm.architecture == "LlamaForSequenceClassification"
    assert rm.parent_id == prefs.id and rm.details["dataset_fingerprint"]
    assert (home / rm.path / "README.md").read_text().startswith("# rm")

    # scoring outside the trainer reads the same numbers as the trainer's last evaluation
    model, tokenizer = reward.load(rm)
    validation = list(datasets.load(datasets.find("prefs"))["validation"])
    chosen = reward.score(model, tokenizer, [(r["prompt"], r["chosen"]) for r in validation])
    rejected = reward.score(model, tokenizer, [(r["prompt"], r["rejected"]) for r in validation])
    margins = [c - r for c, r in zip(chosen, rejected)]
    assert sum(m > 0 for m in margins) / len(margins) == pytest.approx(accuracy)
    assert sum(margins) / len(margins) == pytest.approx(metrics["eval_margin"][-1][1], abs=1e-3)

    # the command line gives the same score
    row = validation[0]
    out = subprocess.run(
        [sys.executable, "-m", "core", "score", "--reward-model", "rm", "--prompt", row["prompt"], "--response", row["chosen"], "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["score"] == pytest.approx(chosen[0], abs=1e-4)


def test_a_lora_reward_model_is_saved_merged(prefs, home):
    reward_model("rm-lora", method="lora", max_steps=6, eval_steps=0)
    rm = models.find("rm-lora")
    assert rm.source == "trained" and models.is_reward_model(rm)
    assert not (home / rm.path / "adapter_config.json").exists() and (home / rm.path / "config.json").is_file()


def test_reward_models_are_refused_where_they_cannot_go(prefs, tmp_path):
    from core.inference import generate
    from core.training.sft import SFTSpec

    with pytest.raises(SpecError, match="dataset: 'prefs' is preference data; sft needs"):
        jobs.submit(SFTSpec(model="base", dataset="prefs", output_name="x"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(10)))
    jobs.wait(jobs.submit(ImportDatasetSpec(path=str(prompts), name="prompts", format="prompt")), timeout_s=120)
    with pytest.raises(SpecError, match="method: a reward model trains with full or lora"):
        RewardSpec(model="base", dataset="prefs", output_name="x", method="qlora")
    with pytest.raises(SpecError, match="dataset: 'prompts' is prompt data; reward needs preference data"):
        jobs.submit(RewardSpec(model="base", dataset="prompts", output_name="x"))
    reward_model("rm", max_steps=2, eval_steps=0)
    assert "is a reward model" in generate.usable(models.find("rm"))
    out = subprocess.run([sys.executable, "-m", "core", "score", "--reward-model", "base", "--prompt", "p", "--response", "r"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "'base' is not a reward model" in out.stderr


# --- DPO ------------------------------------------------------------------------------------


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_dpo_raises_the_margin_and_records_its_charts(prefs, home):
    from core.training.dpo import DPOSpec

    job = jobs.wait(jobs.submit(DPOSpec(model="base", dataset="prefs", output_name="dpo", max_steps=16, batch_size=4,
                                        learning_rate=5e-3, eval_steps=8, save_steps=100)), timeout_s=300)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    metrics = jobs.metrics(job.id)
    for name in ("train_loss", "eval_loss", "reward_chosen", "reward_rejected", "margin", "eval_margin", "accuracy", "logp_chosen"):
        assert metrics.get(name), f"{name} was not recorded"
    margins = [v for _, v in metrics["margin"]]
    assert mean(margins[-4:]) > mean(margins[:2]) and mean(margins[-4:]) > 0
    out = models.find("dpo")
    assert out.source == "adapter" and out.parent_id == prefs.id and out.details["loss_type"] == "sigmoid"
    assert not (home / out.path / "ref").exists()  # TRL's frozen reference copy is not saved with it
    assert "DPO (sigmoid loss, beta 0.1)" in (home / out.path / "README.md").read_text()


def test_dpo_from_an_sft_adapter_trains_that_adapter_on(prefs, home, tmp_path):
    from core.training.dpo import DPOSpec
    from core.training.sft import SFTSpec

    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": c}) + "\n" for p, c, _ in PAIRS))
    jobs.wait(jobs.submit(ImportDatasetSpec(path=str(path), name="sft-data")), timeout_s=120)
    sft = jobs.wait(jobs.submit(SFTSpec(model="base", dataset="sft-data", output_name="sft", max_steps=4, save_steps=100)), timeout_s=300)
    assert sft.status == "succeeded", sft.log_tail
    job = jobs.wait(jobs.submit(DPOSpec(model="sft", dataset="prefs", output_name="sft-dpo", max_steps=3, save_steps=100)),
                    timeout_s=300)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    out, adapter = models.find("sft-dpo"), models.find("sft")
    assert out.source == "adapter" and out.parent_id == prefs.id  # loads on the base, as the SFT adapter does
    assert out.details["started_from"] == {"id": adapter.id, "name": "sft"}
    assert [step.split(" ")[0] for step in models.lineage(out)] == ["base", "sft", "sft-dpo"]
    from core.inference import generate

    model, tokenizer = generate.load(out)  # usable in the playground like any adapter
    assert tokenizer.chat_template


def test_alignment_specs_refuse_what_cannot_work(prefs, tmp_path):
    from core.training.dpo import DPOSpec
    from core.training.grpo import GRPOSpec

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(12)))
    jobs.wait(jobs.submit(ImportDatasetSpec(path=str(prompts), name="prompts", format="prompt")), timeout_s=120)
    with pytest.raises(SpecError, match="dataset: 'prompts' is prompt data; dpo needs preference data"):
        jobs.submit(DPOSpec(model="base", dataset="prompts", output_name="x"))
    with pytest.raises(SpecError, match="dataset: 'prefs' is preference data; grpo needs prompt data"):
        jobs.submit(GRPOSpec(model="base", dataset="prefs", output_name="x", contains=["a"]))
    with pytest.raises(SpecError, match="reward_model: choose at least one reward"):
        GRPOSpec(model="base", dataset="prompts", output_name="x")
    with pytest.raises(SpecError, match=r"format_regex: '\(unclosed' is not a regular expression"):
        GRPOSpec(model="base", dataset="prompts", output_name="x", format_regex="(unclosed")
    with pytest.raises(SpecError, match="num_generations: 4 does not divide the 6 answers of a step .* use batch_size 4 or 8"):
        GRPOSpec(model="base", dataset="prompts", output_name="x", contains=["a"], batch_size=6, num_generations=4)
    with pytest.raises(SpecError, match="reward_weights: no reward named speed"):
        GRPOSpec(model="base", dataset="prompts", output_name="x", contains=["a"], reward_weights={"speed": 2})
    with pytest.raises(SpecError, match="reward_model: 'base' is not a reward model"):
        jobs.submit(GRPOSpec(model="base", dataset="prompts", output_name="x", reward_model="base"))
    with pytest.raises(SpecError, match="label_smoothing: exo_pair needs label_smoothing > 0"):
        DPOSpec(model="base", dataset="prefs", output_name="x", loss_type="exo_pair")
    empty = tmp_path / "empty.py"
    empty.write_text("def score(prompts, completions, **kw):\n    return [0.0] * len(prompts)\n")
    with pytest.raises(SpecError, match="reward_file: it fails on sample rows: .*defines no function `reward"):
        jobs.submit(GRPOSpec(model="base", dataset="prompts", output_name="x", reward_file=str(empty)))
    broken = tmp_path / "broken.py"
    broken.write_text("def reward(prompts, completions, **kw):\n    x = 1\n    return [1 / 0 for _ in prompts]\n")
    with pytest.raises(SpecError, match=r"reward_file: it fails on sample rows: .*broken.py, line 3: ZeroDivisionError"):
        jobs.submit(GRPOSpec(model="base", dataset="prompts", output_name="x", reward_file=str(broken)))
    assert jobs.list_jobs(limit=50) and all(j.kind != "grpo" for j in jobs.list_jobs(limit=50))  # nothing was queued


# --- GRPO -----------------------------------------------------------------------------------


@pytest.fixture
def prompts(prefs, tmp_path, prepared):
    def build():
        path = tmp_path / "prompts.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"Say something about {t}.", "answer": t}) + "\n" for t in TOPICS * 2))
        data = jobs.wait(jobs.submit(ImportDatasetSpec(path=str(path), name="prompts", format="prompt")), timeout_s=120)
        assert data.status == "succeeded", data.log_tail

    prepared("alignment-base-prefs-prompts", build)


def test_grpo_with_a_reward_model_a_rule_and_a_file(prompts, home, tmp_path):
    import hashlib

    from safetensors.torch import load_file

    from core.evaluation import results
    from core.training.grpo import GRPOSpec

    reward_model("rm", max_steps=2, eval_steps=0)
    user = tmp_path / "my_reward.py"
    user.write_text("def reward(prompts, completions, answer=None, **kw):\n    return [float(len(c)) / 100 for c in completions]\n")
    job = jobs.wait(jobs.submit(GRPOSpec(
        model="base", dataset="prompts", output_name="grpo", max_steps=3, batch_size=4, num_generations=4,
        max_completion_length=8, learning_rate=1e-2, reward_model="rm", contains=["a"], reward_file=str(user),
        reward_weights={"file": 0.5}, save_steps=100,
    )), timeout_s=300)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    metrics = jobs.metrics(job.id)
    for name in ("reward", "reward_std", "reward_model", "reward_contains", "reward_file", "kl", "completion_length",
                 "clipped_ratio", "frac_equal_rewards", "train_loss"):
        assert metrics.get(name), f"{name} was not recorded"
    assert results.sample_steps(job.id) == [1, 2, 3]  # the rollouts of every step
    rollout = results.samples(job.id, 3)[0]
    assert {"model", "contains", "file", "total"} <= set(rollout["scores"]) and rollout["output"] is not None
    s = rollout["scores"]
    assert s["total"] == pytest.approx(s["model"] + s["contains"] + 0.5 * s["file"])
    digest = hashlib.sha256(user.read_bytes()).hexdigest()
    assert job.result["reward_file"]["sha256"] == digest
    assert (jobs.run_dir(job.id) / "reward_file.py").read_bytes() == user.read_bytes()
    out = models.find("grpo")
    assert out.details["reward_file"]["sha256"] == digest and out.details["reward_model"]["name"] == "rm"
    adapter = load_file(home / out.path / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())  # the policy moved

    # the run's own rewards judge answers afterwards: its copy of the file, not the file as it is now
    from core.evaluation.reward import EvalRewardSpec

    user.write_text("def reward(prompts, completions, **kw):\n    raise RuntimeError('changed since')\n")
    judged = jobs.wait(jobs.submit(EvalRewardSpec(model="grpo", dataset="prompts", rewards_from=job.id, split="train",
                                                  max_samples=3, max_new_tokens=6)), timeout_s=300)
    assert judged.status == "succeeded", f"{judged.error}\n{judged.log_tail}"
    s = results.samples(judged.id)[0]["scores"]
    assert s["reward"] == pytest.approx(s["model"] + s["contains"] + 0.5 * s["file"])
    assert judged.result["reward_model"] == f"the rewards of job {job.id} (contains, file, model)"
    assert {"mean_reward", "mean_model", "mean_contains", "mean_file"} <= set(judged.result["metrics"])
    with pytest.raises(SpecError, match="rewards_from: job 1 is a create_model job; give a GRPO job"):
        jobs.submit(EvalRewardSpec(model="grpo", dataset="prompts", rewards_from=1))
    with pytest.raises(SpecError, match="reward_model: give a reward model, or rewards_from"):
        EvalRewardSpec(model="grpo", dataset="prompts")


def test_grpo_rule_reward_moves_the_mean_reward_up(prompts):
    from core.training.grpo import GRPOSpec

    job = jobs.wait(jobs.submit(GRPOSpec(
        model="base", dataset="prompts", output_name="grpo-rule", method="full", max_steps=24, batch_size=8,
        num_generations=8, max_completion_length=12, learning_rate=3e-3, beta=0.0, contains=["k"], save_steps=100,
    )), timeout_s=600)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    reward = [v for _, v in jobs.metrics(job.id)["reward"]]
    assert mean(reward[-6:]) > mean(reward[:6]) + 0.1, reward


# --- PPO ------------------------------------------------------------------------------------


def test_ppo_against_the_tiny_reward_model(prompts, home):
    from safetensors.torch import load_file

    from core.evaluation import results
    from core.training.ppo import PPOSpec

    reward_model("rm", max_steps=2, eval_steps=0)
    job = jobs.wait(jobs.submit(PPOSpec(
        model="base", reward_model="rm", dataset="prompts", output_name="ppo", max_steps=3, batch_size=4,
        response_length=8, num_ppo_epochs=1, learning_rate=1e-3, save_steps=100,
    )), timeout_s=300)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    metrics = jobs.metrics(job.id)
    for name in ("reward", "score", "kl", "entropy", "policy_loss", "value_loss", "response_length", "clip_fraction"):
        assert metrics.get(name), f"{name} was not recorded"
    assert [s for s, _ in metrics["reward"]] == [1, 2, 3]
    assert results.sample_steps(job.id) == [1, 2, 3]
    rollout = results.samples(job.id, 1)[0]
    assert "reward_model" in rollout["scores"] and rollout["prompt"]
    out = models.find("ppo")
    assert out.source == "adapter" and out.details["reward_model"]["name"] == "rm"
    adapter = load_file(home / out.path / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())  # the policy moved
    assert not any("v_head" in k or "score" in k for k in adapter)  # the value model is not saved with it


def paused_after_two_steps(job_id: int) -> int:
    """Pause a run once it has taken 2 steps; the step its checkpoint holds."""
    from conftest import wait_for

    wait_for(lambda: jobs.get(job_id).progress_step >= 2, 180, what="the run to take steps")
    assert jobs.cancel(job_id, mode="pause") == "stopping"
    paused = jobs.wait(job_id, timeout_s=180)
    assert paused.status == "paused", paused.log_tail
    return paused.result["step"]


def test_ppo_pauses_and_resumes_where_it_stopped(prompts):
    from core.training.common import resume
    from core.training.ppo import PPOSpec

    reward_model("rm", max_steps=2, eval_steps=0)
    first = jobs.submit(PPOSpec(model="base", reward_model="rm", dataset="prompts", output_name="ppo", max_steps=6,
                                batch_size=4, response_length=6, num_ppo_epochs=1, save_steps=100))
    step = paused_after_two_steps(first)
    assert (jobs.run_dir(first) / "checkpoints" / f"checkpoint-{step}" / "value_model" / "config.json").is_file()
    again = jobs.wait(resume(first), timeout_s=300)
    assert again.status == "succeeded", f"{again.error}\n{again.log_tail}"
    assert [s for s, _ in jobs.metrics(again.id)["reward"]] == list(range(step + 1, 7))  # on to the planned 6 updates
    assert [s for s, _ in jobs.metrics_with_history(again.id)["reward"]] == list(range(1, 7))
    assert models.find("ppo").details["steps"] == 6


def test_ppo_refuses_a_reward_model_of_another_tokenizer_and_eos_padding(prompts):
    from core.training.ppo import PPOSpec

    other = jobs.wait(jobs.submit(CreateModelSpec(name="other", arch="llama", size="custom", n_layer=1, hidden_size=32,
                                                  n_head=2, context_length=128, vocab_size=512)), timeout_s=120)
    assert other.status == "succeeded", other.log_tail
    reward_model("rm-other", model="other", max_steps=1, eval_steps=0)
    with pytest.raises(SpecError, match="reward_model: 'rm-other' reads another tokenizer than 'base'"):
        jobs.submit(PPOSpec(model="base", reward_model="rm-other", dataset="prompts", output_name="x"))
    with pytest.raises(SpecError, match="reward_model: 'base' is not a reward model"):
        jobs.submit(PPOSpec(model="base", reward_model="base", dataset="prompts", output_name="x"))
    reward_model("rm", max_steps=1, eval_steps=0)
    with pytest.raises(SpecError, match=r"pad_token: '<\|endoftext\|>' is EOS, BOS or part of the chat template"):
        jobs.submit(PPOSpec(model="base", reward_model="rm", dataset="prompts", output_name="x", pad_token="<|endoftext|>"))
    with pytest.raises(SpecError, match="dataset: 'prefs' is preference data; ppo needs prompt data"):
        jobs.submit(PPOSpec(model="base", reward_model="rm", dataset="prefs", output_name="x"))


def test_grpo_pauses_and_resumes_with_the_reward_curve_going_on(prompts):
    from conftest import wait_for
    from core.training.common import resume
    from core.training.grpo import GRPOSpec

    first = jobs.submit(GRPOSpec(model="base", dataset="prompts", output_name="long", contains=["k"], max_steps=500,
                                 batch_size=4, num_generations=4, max_completion_length=6, save_steps=1000))
    step = paused_after_two_steps(first)
    again = resume(first)
    wait_for(lambda: len(jobs.metrics(again).get("reward", [])) >= 2, 180, what="the resumed run to log")
    jobs.cancel(again)
    jobs.wait(again, timeout_s=180)
    assert jobs.metrics(again)["reward"][0][0] == step + 1  # the curve goes on from the saved step
    history = [s for s, _ in jobs.metrics_with_history(again)["reward"]]
    assert history[:step] == list(range(1, step + 1)) and history == sorted(history)


def test_a_reward_file_failing_mid_run_fails_the_job_with_the_step_and_stays_resumable(prompts, tmp_path):
    from core.training.common import has_checkpoint, resume
    from core.training.grpo import GRPOSpec

    user = tmp_path / "flaky.py"
    user.write_text(
        "def reward(prompts, completions, trainer_state=None, **kw):\n"
        "    if trainer_state is not None and trainer_state.global_step >= 2:\n"
        "        raise RuntimeError('the grader is down')\n"
        "    return [0.5 for _ in completions]\n"
    )
    job = jobs.wait(jobs.submit(GRPOSpec(model="base", dataset="prompts", output_name="flaky", reward_file=str(user),
                                         max_steps=4, batch_size=4, num_generations=4, max_completion_length=6,
                                         save_steps=1)), timeout_s=300)
    assert job.status == "failed" and job.error_class == "bad_input", job.log_tail
    assert job.error == "the file reward failed at step 3 (reward_file.py, line 3): RuntimeError: the grader is down"
    assert "Traceback" in jobs.read_log_tail(job.id, 200) and "the grader is down" in jobs.read_log_tail(job.id, 200)
    assert has_checkpoint(job.id)  # steps 1 and 2 were saved
    user.write_text("def reward(prompts, completions, **kw):\n    return [0.5 for _ in completions]\n")
    again = jobs.wait(resume(job.id), timeout_s=300)
    assert again.status == "succeeded", again.log_tail
    assert [s for s, _ in jobs.metrics(again.id)["reward"]] == [3, 4]


# --- judged by reward ----------------------------------------------------------------------


def test_a_run_is_judged_by_reward_at_every_checkpoint(prompts):
    from core.evaluation import results
    from core.evaluation.reward import EvalRewardSpec
    from core.inference import reward
    from core.training.dpo import DPOSpec

    reward_model("rm", max_steps=2, eval_steps=0)
    dpo = jobs.wait(jobs.submit(DPOSpec(model="base", dataset="prefs", output_name="dpo", max_steps=4, save_steps=2,
                                        keep_checkpoints=0)), timeout_s=300)
    assert dpo.status == "succeeded", dpo.log_tail
    with pytest.raises(SpecError, match="reward_model: 'dpo' is not a reward model"):
        jobs.submit(EvalRewardSpec(model="dpo", dataset="prompts", reward_model="dpo"))
    job = jobs.wait(jobs.submit(EvalRewardSpec(model="dpo", dataset="prompts", reward_model="rm", max_samples=4, split="train",
                                               max_new_tokens=6, checkpoints=True)), timeout_s=300)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    assert [p["step"] for p in job.result["by_step"]] == [2, 4] and job.result["reward_model"] == "rm"
    assert [s for s, _ in jobs.metrics(job.id)["mean_reward"]] == [2, 4]  # the over-steps chart
    samples = results.samples(job.id)
    assert len(samples) == 4 and all("reward" in s["scores"] for s in samples)
    model, tokenizer = reward.load(models.find("rm"))
    again = reward.score(model, tokenizer, [(s["prompt"], s["output"]) for s in samples])
    assert again == pytest.approx([s["scores"]["reward"] for s in samples], abs=1e-4)
    assert job.result["metrics"]["mean_reward"] == pytest.approx(mean(again), abs=1e-4)


def test_dpo_grpo_and_ppo_train_a_qlora_adapter(prompts, home):
    from core.hardware import qlora_unavailable
    from core.training.dpo import DPOSpec
    from core.training.grpo import GRPOSpec
    from core.training.ppo import PPOSpec

    if why := qlora_unavailable():
        pytest.skip(f"QLoRA cannot run on this machine: {why}")
    reward_model("rm", max_steps=1, eval_steps=0)
    for spec in (
        DPOSpec(model="base", dataset="prefs", output_name="q-dpo", method="qlora", max_steps=2),
        GRPOSpec(model="base", dataset="prompts", output_name="q-grpo", method="qlora", contains=["k"], max_steps=2,
                 batch_size=4, num_generations=4, max_completion_length=6),
        PPOSpec(model="base", reward_model="rm", dataset="prompts", output_name="q-ppo", method="qlora", max_steps=2,
                batch_size=4, response_length=6, num_ppo_epochs=1),
    ):
        job = jobs.wait(jobs.submit(spec), timeout_s=300)
        assert job.status == "succeeded", f"{spec.kind}: {job.error}\n{job.log_tail}"
        out = models.find(spec.output_name)
        assert out.source == "adapter" and (home / out.path / "adapter_model.safetensors").is_file(), spec.kind
