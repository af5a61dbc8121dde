"""Platform overhead and packing, measured: LoRA fine-tuning of the starter model
for a fixed number of steps, as a platform job and as a plain TRL script with
the same settings, in one run on the same machine.

    .venv/bin/python bench/bench_sft.py [--steps 20]

Records the numbers in bench/README.md (appends a dated section) and prints them.
Tokens/s = trained (non-padding) tokens / the trainer's train_runtime, so model
loading and saving are left out on both sides.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from common import DATA, ROOT, starter_home


def platform_run(steps: int, packing: bool, name: str) -> dict:
    from core.jobs import lifecycle as jobs
    from core.training.sft import SFTSpec

    spec = SFTSpec(model="starter", dataset="instructions", output_name=name, method="lora", max_steps=steps,
                   batch_size=4, learning_rate=2e-4, max_length=256, packing=packing, eval_steps=0, save_steps=10_000)
    job = jobs.wait(jobs.submit(spec), timeout_s=3600)
    if job.status != "succeeded":
        raise SystemExit(f"platform job failed: {job.error}\n{job.log_tail}")
    r = job.result
    return {"steps": r["steps"], "tokens": r["train_tokens"], "train_runtime": r["train_runtime_s"],
            "tokens_per_s": r["train_tokens"] / r["train_runtime_s"], "peak_rss_mb": r["peak_memory_mb"]}


def plain_run(model_dir: Path, steps: int, packing: bool) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "plain_sft.py"), str(model_dir), str(DATA), str(steps)]
    out = subprocess.run(cmd + (["--packing"] if packing else []), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    home = starter_home("llmdev-bench-")
    from core.models import registry as models

    model_dir = home / models.find("starter").path

    rows = []
    for packing in (False, True):
        plat = platform_run(args.steps, packing, f"bench-{'packed' if packing else 'plain'}")
        base = plain_run(model_dir, args.steps, packing)
        rows.append((packing, plat, base))

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"\n### {when} · {platform.node()} · {os.cpu_count()} cores · {args.steps} LoRA steps on the starter (batch 4, max length 256, fp32 CPU)\n",
        "| packing | platform tokens/s | plain TRL tokens/s | platform / plain | platform peak RSS (MB) | plain peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for packing, plat, base in rows:
        lines.append(
            f"| {'on' if packing else 'off'} | {plat['tokens_per_s']:.1f} | {base['tokens_per_s']:.1f} | "
            f"{plat['tokens_per_s'] / base['tokens_per_s']:.3f} | {plat['peak_rss_mb']:.0f} | {base['peak_rss_mb']:.0f} |"
        )
    off, on = rows[0][1], rows[1][1]
    lines.append(f"\nPacking on the platform: {on['tokens_per_s'] / off['tokens_per_s']:.2f}x the tokens/s without it.\n")
    text = "\n".join(lines)
    print(text)
    readme = ROOT / "bench" / "README.md"
    with open(readme, "a") as fh:
        fh.write(text + "\n")


if __name__ == "__main__":
    main()
