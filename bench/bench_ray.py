"""What running a job on Ray costs, measured: the same SFT job (LoRA on a small
llama made from a config) run as a local job and as a Ray job on a local Ray
head, alternately, in one run on the same machine.

    .venv/bin/python bench/bench_ray.py [--steps 40] [--runs 2] [--address http://127.0.0.1:8265] [--no-save]

Without --address it starts a Ray head on 127.0.0.1 (2 CPUs) and stops it at the
end. Submit-to-first-step = from `jobs.submit` returning to the job's first
optimizer step showing in the database (polled every 50 ms); tokens/s = trained
tokens / the trainer's train_runtime (start-up and saving left out). Goal: Ray's
tokens/s >= 0.95x local (Ray adds start-up, not per-step cost). Records the
numbers in the "Ray" section of bench/README.md and prints them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, publish

SECTION = "## Jobs on Ray: local vs a local Ray head (`bench/bench_ray.py`)"
RAY = str(Path(sys.executable).parent / "ray")


def start_head(port: int = 56479, dashboard: int = 58365) -> tuple[str, str]:
    temp = tempfile.mkdtemp(prefix="llmdev-bench-ray-")
    subprocess.run([RAY, "start", "--head", "--num-cpus=2", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--object-store-memory=200000000",
                    "--disable-usage-stats", f"--temp-dir={temp}"], check=True, capture_output=True,
                   env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    return f"http://127.0.0.1:{dashboard}", temp


def home() -> Path:
    path = Path(tempfile.mkdtemp(prefix="llmdev-bench-ray-home-"))
    os.environ.update(LLMDEV_HOME=str(path), LLMDEV_AUTO_STARTER="0", TOKENIZERS_PARALLELISM="false")
    os.environ.pop("DATABASE_URL", None)
    sys.path.insert(0, str(ROOT))
    from core.data.importer import ImportDatasetSpec
    from core.jobs import lifecycle as jobs
    from core.models.create import CreateModelSpec

    facts = [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.") for a in range(12) for b in range(8)]
    data = path / "facts.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "response": r}) + "\n" for q, r in facts))
    for spec in (CreateModelSpec(name="small", arch="llama", size="small", seed=1),
                 ImportDatasetSpec(path=str(data), name="facts", validation_fraction=0)):
        job = jobs.wait(jobs.submit(spec), timeout_s=600)
        assert job.status == "succeeded", job.log_tail
    return path


def one(runner: str, steps: int, n: int) -> dict:
    from core.jobs import lifecycle as jobs
    from core.training.sft import SFTSpec

    spec = SFTSpec(model="small", dataset="facts", output_name=f"{runner}-{n}", method="lora", max_steps=steps,
                   batch_size=8, max_length=64, eval_steps=0, save_steps=10_000, threads=2, runner=runner)
    start = time.monotonic()
    job_id = jobs.submit(spec)
    submitted = time.monotonic()
    first = None
    while True:
        job = jobs.get(job_id)
        if first is None and job.progress_step >= 1:
            first = time.monotonic() - submitted
        if job.status not in jobs.ACTIVE:
            break
        time.sleep(0.05)
    if job.status != "succeeded":
        raise SystemExit(f"{runner} job failed: {job.error}\n{job.log_tail}")
    r = job.result
    return {"submit_s": submitted - start, "first_step_s": first, "tokens_per_s": r["train_tokens"] / r["train_runtime_s"],
            "wall_s": time.monotonic() - start}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--address", default="")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    address, temp = (args.address, None) if args.address else start_head()
    os.environ["LLMDEV_RAY_ADDRESS"] = address
    try:
        home()
        results: dict[str, list[dict]] = {"local": [], "ray": []}
        for n in range(args.runs):
            for runner in ("local", "ray"):
                results[runner].append(one(runner, args.steps, n))
                print(runner, results[runner][-1], flush=True)
    finally:
        if temp:
            subprocess.run([RAY, "stop", "--force"], capture_output=True)

    import ray
    import torch
    import transformers

    def median(runner: str, key: str) -> float:
        return statistics.median(r[key] for r in results[runner])

    when = datetime.date.today().isoformat()
    lines = [
        f"\n### {when}: LoRA SFT of a small llama (from a config), {args.steps} steps, batch 8, max length 64, 2 threads, "
        f"{args.runs} runs each, alternating; {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, ray {ray.__version__}\n",
        "| runner | submit (median) | submit to first step (median) | tokens/s (median) | whole job (median) |",
        "|---|---|---|---|---|",
    ]
    for runner in ("local", "ray"):
        lines.append(f"| {runner} | {median(runner, 'submit_s'):.2f} s | {median(runner, 'first_step_s'):.1f} s | "
                     f"{median(runner, 'tokens_per_s'):.0f} | {median(runner, 'wall_s'):.1f} s |")
    ratio = median("ray", "tokens_per_s") / median("local", "tokens_per_s")
    extra = median("ray", "first_step_s") - median("local", "first_step_s")
    lines.append(f"\nRay / local tokens/s: {ratio:.3f} (goal >= 0.95); Ray adds {extra:.1f} s before the first step.")
    publish(SECTION, lines, save=not args.no_save)


if __name__ == "__main__":
    main()
