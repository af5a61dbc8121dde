"""Alignment kinds, platform job vs plain TRL script: each of reward, DPO, GRPO
and PPO trains the starter model with LoRA for a few steps as a platform job
(worker subprocess, metrics and rollouts to the database every step) and as
bench/plain_align.py with the same settings, in one run on the same machine.

    .venv/bin/python bench/bench_align.py [--steps 8] [--kinds reward,dpo,grpo,ppo]

Each way runs --rounds times in ABBA order (platform, plain, plain, platform):
the speed of this shared machine drifts between runs, and the order puts a drift
on both sides. Steps/s = optimizer steps (PPO: updates) / the trainer's train_runtime (PPO: the
wall time of train()), so loading and saving are left out on both sides.
Appends a dated table to the "Alignment kinds" section of bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

from common import ROOT, publish, starter_home

SECTION = "## Alignment kinds: platform job vs plain TRL script (`bench/bench_align.py`)"
PREFS = ROOT / "assets" / "samples" / "preferences.jsonl"
PROMPTS = ROOT / "assets" / "samples" / "prompts.jsonl"
# the plain script's settings, as spec fields (LoRA r=8 all-linear, batch 4, seed 0: the specs' defaults)
SPECS = {
    "reward": dict(dataset="prefs", learning_rate=1e-4, max_length=256),
    "dpo": dict(dataset="prefs", learning_rate=5e-5, max_length=256, beta=0.1, loss_type="sigmoid"),
    "grpo": dict(dataset="prompts", learning_rate=2e-5, num_generations=4, max_completion_length=32, temperature=1.0,
                 beta=0.04, loss_type="dapo", contains=["the"]),
    "ppo": dict(dataset="prompts", learning_rate=3e-5, response_length=32, temperature=0.7, kl_coef=0.05,
                num_ppo_epochs=2, missing_eos_penalty=1.0, reward_model="rm"),
}


def platform_run(kind: str, steps: int) -> dict:
    from core.jobs import lifecycle as jobs
    from core.kinds import spec_class

    spec = spec_class(kind)(model="starter", output_name=f"bench-{kind}-{time.time():.0f}", method="lora", max_steps=steps, batch_size=4,
                            save_steps=10_000, **SPECS[kind], **({"eval_steps": 0} if kind in ("reward", "dpo") else {}))
    job = jobs.wait(jobs.submit(spec), timeout_s=3600)
    if job.status != "succeeded":
        raise SystemExit(f"the {kind} job failed: {job.error}\n{job.log_tail}")
    return {"steps": job.result["steps"], "train_seconds": job.result["train_runtime_s"],
            "steps_per_s": job.result["steps"] / job.result["train_runtime_s"], "peak_memory_mb": job.result["peak_memory_mb"]}


def plain_run(kind: str, model_dir, data_dir, steps: int, rm_dir) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "plain_align.py"), kind, str(model_dir), str(data_dir), str(steps), str(rm_dir or "")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the plain {kind} script failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pooled(runs: list[dict]) -> dict:
    """Steps/s over all rounds of one way (total steps / total seconds)."""
    steps, seconds = sum(r["steps"] for r in runs), sum(r["train_seconds"] for r in runs)
    return {"steps_per_s": steps / seconds, "peak_memory_mb": max(r.get("peak_memory_mb", 0) for r in runs),
            "each": [r["steps_per_s"] for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--kinds", default="reward,dpo,grpo,ppo")
    ap.add_argument("--rounds", type=int, default=2, help="runs each way, in ABBA order")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    home = starter_home("llmdev-bench-align-")
    from core.data import registry as datasets
    from core.data.importer import ImportDatasetSpec
    from core.jobs import lifecycle as jobs
    from core.models import registry as models
    from core.training.reward import RewardSpec

    for path, name, fmt in ((PREFS, "prefs", "preference"), (PROMPTS, "prompts", "prompt")):
        assert jobs.wait(jobs.submit(ImportDatasetSpec(path=str(path), name=name, format=fmt)), timeout_s=600).status == "succeeded"
    kinds = args.kinds.split(",")
    rm_dir = None
    if "ppo" in kinds:  # PPO's reward (and value) model: a short LoRA reward model of the starter
        job = jobs.wait(jobs.submit(RewardSpec(model="starter", dataset="prefs", output_name="rm", max_steps=4, eval_steps=0)),
                        timeout_s=3600)
        assert job.status == "succeeded", job.log_tail
        rm_dir = home / models.find("rm").path
    model_dir = home / models.find("starter").path
    rows = []
    for kind in kinds:
        data_dir = home / datasets.find(SPECS[kind]["dataset"]).path  # the very rows the job trains on
        plat, base = [], []
        # platform, plain, plain, platform, ...: this shared machine's speed drifts by 10-20%
        # over minutes, and an ABBA order puts a drift on both sides alike
        for r in range(args.rounds):
            for way in (("platform", "plain") if r % 2 == 0 else ("plain", "platform")):
                if way == "platform":
                    plat.append(platform_run(kind, args.steps))
                else:
                    base.append(plain_run(kind, model_dir, data_dir, args.steps, rm_dir))
        print(kind, json.dumps(plat), json.dumps(base), flush=True)
        rows.append((kind, _pooled(plat), _pooled(base)))

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"\n### {when} · {platform.node()} · {os.cpu_count()} cores · {args.steps} LoRA steps of each kind on the starter "
        f"(batch 4, fp32 CPU), {args.rounds} runs each way (ABBA)\n",
        "| kind | platform steps/s | plain TRL steps/s | platform / plain | platform runs | plain runs | platform s/step | platform peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, plat, base in rows:
        each = lambda r: ", ".join(f"{x:.3f}" for x in r["each"])  # noqa: E731
        lines.append(f"| {kind} | {plat['steps_per_s']:.3f} | {base['steps_per_s']:.3f} | {plat['steps_per_s'] / base['steps_per_s']:.3f} | "
                     f"{each(plat)} | {each(base)} | {1 / plat['steps_per_s']:.1f} | {plat['peak_memory_mb']:.0f} |")
    publish(SECTION, lines, save=not args.no_record)


if __name__ == "__main__":
    main()
