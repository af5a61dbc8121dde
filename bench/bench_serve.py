"""Serving throughput, measured: the starter model behind `python -m core serve`
(the PyTorch backend, continuous batching; and the onnxruntime backend on its
fp32 ONNX export) and behind `transformers serve --continuous-batching`, with
1, 4 and 8 concurrent streaming clients, in one run.

    .venv/bin/python bench/bench_serve.py [--requests 2] [--tokens 48] [--threads 2] [--no-save]

Each client sends `--requests` chat completions one after another (greedy,
`--tokens` new tokens at most, a different prompt each) with `stream: true`
through the official `openai` client. Aggregate tokens/s = new tokens of every
reply (the usage the server reports) / wall time from the first request to the
last reply; requests/s likewise; time to first token = from sending a request to
its first non-empty piece (median). Both servers get the same torch threads and
the same paged-cache settings. Records the numbers in the "Serving" section of
bench/README.md and prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

import httpx

from common import ROOT, publish, starter_home

SECTION = "## Serving: `python -m core serve` vs `transformers serve` (`bench/bench_serve.py`)"
PROMPTS = [
    "Write a short story about a lighthouse keeper.", "Explain how bees make honey.",
    "Give three tips for learning to cook.", "What is the capital of France, and why is it famous?",
    "Describe a rainy day in the city.", "How does a bicycle stay upright?",
    "Write a haiku about autumn leaves.", "Why is the sky blue?",
    "List the planets of the solar system.", "What makes a good friend?",
    "Explain photosynthesis to a child.", "Describe your ideal breakfast.",
    "How do airplanes fly?", "Write a limerick about a cat.",
    "What is the water cycle?", "Give advice to a new student.",
]
CACHE_TOKENS = 8192
PAGE = 16
BATCH_TOKENS = 512


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} did not answer within {timeout:g} s")


async def one_client(client, model: str, prompts: list[str], tokens: int, out: list) -> None:
    for prompt in prompts:
        start = time.perf_counter()
        first = None
        made = 0
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=tokens, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
        pieces = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces += 1
                if first is None:
                    first = time.perf_counter() - start
            if chunk.usage:
                made = chunk.usage.completion_tokens
        out.append({"tokens": made or pieces, "ttft": first, "seconds": time.perf_counter() - start})


async def measure(api_base: str, model: str, clients: int, requests: int, tokens: int) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=api_base, api_key="none", max_retries=0, timeout=1800)
    results: list = []
    start = time.perf_counter()
    await asyncio.gather(*[
        one_client(client, model, [PROMPTS[(c * requests + r) % len(PROMPTS)] for r in range(requests)], tokens, results)
        for c in range(clients)
    ])
    wall = time.perf_counter() - start
    await client.close()
    made = sum(r["tokens"] for r in results)
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    return {"tokens_per_s": made / wall, "requests_per_s": len(results) / wall, "tokens": made,
            "ttft_s": statistics.median(ttfts) if ttfts else float("nan"), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2, help="requests each client sends, one after another")
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per request")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--no-save", action="store_true", help="print, do not append to bench/README.md")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    home = starter_home("llmdev-bench-serve-")
    from core.export.onnx import ExportOnnxSpec
    from core.jobs import lifecycle as jobs
    from core.models import registry as models
    from core.serving.service import ServeSpec

    job = jobs.wait(jobs.submit(ExportOnnxSpec(model="starter", output_name="starter-onnx", verify_steps=8)), timeout_s=3600)
    assert job.status == "succeeded", job.log_tail
    ours_port = free_port()
    serve_id = jobs.submit(ServeSpec(models=["starter"], exports=["starter-onnx"], port=ours_port, threads=args.threads,
                                     cache_tokens=CACHE_TOKENS, batch_tokens=BATCH_TOKENS, max_tokens=args.tokens))
    hf_port = free_port()
    folder = home / models.find("starter").path
    hf_env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    hf_log = open(home / "transformers-serve.log", "w")
    hf = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "transformers"), "serve", str(folder), "--continuous-batching",
         "--cb-block-size", str(PAGE), "--cb-num-blocks", str(CACHE_TOKENS // PAGE), "--cb-max-batch-tokens",
         str(BATCH_TOKENS), "--dtype", "float32", "--device", "cpu", "--host", "127.0.0.1", "--port", str(hf_port)],
        env=hf_env, stdout=hf_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{ours_port}/health")
        wait_ready(f"http://127.0.0.1:{hf_port}/v1/models")
        targets = {
            "core serve (torch)": (f"http://127.0.0.1:{ours_port}/v1", "starter"),
            "core serve (onnx)": (f"http://127.0.0.1:{ours_port}/v1", "starter-onnx"),
            "transformers serve": (f"http://127.0.0.1:{hf_port}/v1", str(folder)),
        }
        for base, model in targets.values():  # warm up: first requests build caches
            asyncio.run(measure(base, model, 2, 1, 8))
        rows: dict[tuple[str, int], dict] = {}
        for n in counts:
            for name, (base, model) in targets.items():
                rows[name, n] = asyncio.run(measure(base, model, n, args.requests, args.tokens))
                r = rows[name, n]
                print(f"{name:20s} {n} clients: {r['tokens_per_s']:6.1f} tok/s {r['requests_per_s']:5.2f} req/s "
                      f"ttft {r['ttft_s']:.2f} s ({r['tokens']} tokens in {r['wall_s']:.1f} s)", flush=True)
    finally:
        jobs.cancel(serve_id)
        jobs.wait(serve_id, timeout_s=60)
        os.killpg(hf.pid, signal.SIGTERM)
        hf.wait(30)

    import torch
    import transformers

    date = datetime.date.today().isoformat()
    lines = [
        "",
        f"### {date}: starter (SmolLM2-135M-Instruct, fp32), {args.requests} streamed chat requests per client, greedy, "
        f"up to {args.tokens} new tokens, {args.threads} torch threads per server, paged cache {CACHE_TOKENS} tokens "
        f"(pages of {PAGE}), {BATCH_TOKENS} tokens per forward; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; torch {torch.__version__}, transformers {transformers.__version__}",
        "",
        "| server | clients | tokens/s | requests/s | time to first token (median) | vs 1 client |",
        "|---|---|---|---|---|---|",
    ]
    for name in targets:
        base = rows[name, counts[0]]["tokens_per_s"]
        for n in counts:
            r = rows[name, n]
            lines.append(f"| {name} | {n} | {r['tokens_per_s']:.1f} | {r['requests_per_s']:.2f} | {r['ttft_s']:.2f} s "
                         f"| {r['tokens_per_s'] / base:.2f}x |")
    top = counts[-1]
    ours, theirs = rows["core serve (torch)", top]["tokens_per_s"], rows["transformers serve", top]["tokens_per_s"]
    lines += [
        "",
        f"At {top} clients: core serve (torch) {ours / rows['core serve (torch)', counts[0]]['tokens_per_s']:.2f}x its "
        f"1-client tokens/s (goal >= 3x), {ours / theirs:.2f}x `transformers serve` (goal >= 1x); "
        f"onnx backend {rows['core serve (onnx)', top]['tokens_per_s'] / rows['core serve (onnx)', counts[0]]['tokens_per_s']:.2f}x.",
    ]
    publish(SECTION, lines, save=not args.no_save)


if __name__ == "__main__":
    sys.exit(main())
