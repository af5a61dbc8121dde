"""Playground decode speed, measured: the starter model answering one prompt through
the playground's path (model cache -> generate.stream, token by token with
incremental detokenisation and stop-string checks) next to plain
`model.generate` with the same settings, alternating, in one run.

    .venv/bin/python bench/bench_decode.py [--tokens 64] [--reps 5] [--threads 1]

Converts the starter into a temporary data home (as bench/bench_sft.py does),
then times greedy decoding of the same chat prompt both ways. Tokens/s = new
tokens / wall time: for the stream from the call to the last piece (so thread
start, the token queue and decoding are included); for plain generate the
generate() call alone. Both must produce the same text. Records the numbers in
the "Playground decode" section of bench/README.md and prints them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, record
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
SECTION = "## Playground decode: generate.stream vs plain model.generate (`bench/bench_decode.py`)"


def timed_stream(model, tokenizer, text: str, settings) -> dict:
    from core.inference import generate

    stats = generate.Stats()
    start = time.perf_counter()
    first = None
    pieces = []
    for piece in generate.stream(model, tokenizer, text, settings, stats):
        first = first if first is not None else time.perf_counter() - start
        pieces.append(piece)
    seconds = time.perf_counter() - start
    return {"text": "".join(pieces), "tokens": stats.new_tokens, "seconds": seconds, "first_s": first}


def timed_generate(model, tokenizer, text: str, max_new_tokens: int, eos: set[int]) -> dict:
    import torch

    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tokenizer.pad_token_id)
    seconds = time.perf_counter() - start
    new = [t for t in out[0, inputs["input_ids"].shape[1]:].tolist() if t not in eos]
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "tokens": len(new), "seconds": seconds}


def per_rep(rows: list[dict]) -> str:
    return ", ".join(f"{r['tokens'] / r['seconds']:.2f}" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions of each (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on 2 shared cores)")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="llmdev-bench-"))
    os.environ.update(LLMDEV_HOME=str(home), LLMDEV_AUTO_STARTER="0", TOKENIZERS_PARALLELISM="false",
                      HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    os.environ.pop("DATABASE_URL", None)
    sys.path.insert(0, str(ROOT))
    import torch

    from core.inference import generate
    from core.inference.cache import ModelCache, default_budget
    from core.jobs import lifecycle as jobs
    from core.models import registry as models
    from core.models.starter import AddStarterSpec

    torch.set_num_threads(args.threads)
    job = jobs.wait(jobs.submit(AddStarterSpec(name="starter")), timeout_s=1800)
    assert job.status == "succeeded", job.log_tail
    model, tokenizer = ModelCache(default_budget()).get(models.find("starter"))  # what the page does
    text = generate.prompt_text(tokenizer, [{"role": "user", "content": PROMPT}])
    settings = generate.Settings(max_new_tokens=args.tokens, temperature=0)
    eos = set(generate.eos_ids(model, tokenizer))

    timed_stream(model, tokenizer, text, settings)  # warm-up, both paths
    timed_generate(model, tokenizer, text, args.tokens, eos)
    streamed, plain = [], []
    for _ in range(args.reps):  # alternating, so drift on a shared machine hits both
        streamed.append(timed_stream(model, tokenizer, text, settings))
        plain.append(timed_generate(model, tokenizer, text, args.tokens, eos))
    assert streamed[0]["text"] == plain[0]["text"], (streamed[0]["text"], plain[0]["text"])
    assert streamed[0]["tokens"] == plain[0]["tokens"]

    s_rate = statistics.median(r["tokens"] / r["seconds"] for r in streamed)
    p_rate = statistics.median(r["tokens"] / r["seconds"] for r in plain)
    first = statistics.median(r["first_s"] for r in streamed)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"\n### {when} · {platform.node()} · {os.cpu_count()} cores · {args.threads} torch thread(s) · "
        f"starter, greedy, {streamed[0]['tokens']} new tokens, {args.reps} alternating reps (median)\n",
        "| path | tokens/s | per rep |",
        "|---|---|---|",
        f"| playground (`generate.stream`) | {s_rate:.2f} | {per_rep(streamed)} |",
        f"| plain `model.generate` | {p_rate:.2f} | {per_rep(plain)} |",
        f"\nPlayground / plain: **{s_rate / p_rate:.3f}**. First piece after {first:.2f} s (prompt of "
        f"{len(tokenizer(text, add_special_tokens=False)['input_ids'])} tokens). Same text both ways.\n",
    ]
    out = "\n".join(lines)
    print(out)
    record(SECTION, out)


if __name__ == "__main__":
    main()
