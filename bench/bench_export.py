"""Decode speed of the exports, measured: the starter model answering one chat
prompt greedily at batch 1 with PyTorch `generate` (fp32) and with onnxruntime
on the fp32, int8 and 4-bit graphs of an ONNX export made by the platform's own
job, alternating, in one run; beside each, the fraction of the machine's memory
bandwidth it uses.

    .venv/bin/python bench/bench_export.py [--tokens 64] [--reps 3] [--threads 1]

Decode at batch 1 reads every weight once per token, so tokens/s x bytes of
weights read per token cannot pass the bandwidth of memory. The script measures
that bandwidth in the same run (numpy summing a 512 MB array, one thread: the
best of 5) and counts the bytes each path reads per token from the model itself:
PyTorch, the parameters of its Linear layers (the tied output layer included);
onnxruntime, the initializers its MatMul-type nodes read, directly or through a
Transpose (an embedding table that is only gathered from adds one row). Tokens/s = new tokens / wall time of
the whole reply (prefill included, both sides). Agreement = greedy tokens equal
to PyTorch's before they part, of all. Records the numbers in the "Export
decode" section of bench/README.md and prints them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

from common import publish, starter_home

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
SECTION = "## Export decode: onnxruntime graphs vs PyTorch (`bench/bench_export.py`)"
MATMULS = {"MatMul", "Gemm", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul"}


def bandwidth() -> float:
    """Bytes/s one thread reads from memory (best of 5 sums over 512 MB)."""
    import numpy as np

    data = np.ones(128 * 1024 * 1024, dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def torch_bytes(model) -> int:
    """Bytes of weights one decode step reads: every Linear's (lm_head included)."""
    import torch

    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel() * module.weight.element_size()
    return total


def onnx_bytes(path) -> int:
    """Bytes of initializers a decode step reads: those MatMul-type nodes take
    (through a Transpose too: a tied output layer), one row of a table only
    gathered from."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    sizes = {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    rows = {t.name: max(1, t.dims[0]) if t.dims else 1 for t in model.graph.initializer}
    into_matmul = {name for node in model.graph.node if node.op_type in MATMULS for name in node.input}
    read: dict[str, int] = {}
    for node in model.graph.node:
        for name in (n for n in node.input if n in sizes):
            if node.op_type in MATMULS or (node.op_type == "Transpose" and set(node.output) & into_matmul):
                read[name] = sizes[name]
            elif node.op_type == "Gather" and name == node.input[0]:
                read.setdefault(name, sizes[name] // rows[name])
    return int(sum(read.values()))


def torch_reply(model, ids, tokens: int) -> tuple[list[int], float]:
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None)
    return out[0, ids.shape[1]:].tolist(), time.perf_counter() - start


def ort_reply(decoder, ids: list[int], tokens: int) -> tuple[list[int], float]:
    import numpy as np

    start = time.perf_counter()
    input_ids = np.array([ids], dtype=np.int64)
    mask = np.ones_like(input_ids)
    pos = np.arange(len(ids), dtype=np.int64)[None]
    past = decoder.empty_past(1)
    made: list[int] = []
    for _ in range(tokens):
        logits, past = decoder(input_ids, mask, pos, past)
        made.append(int(np.argmax(logits[0, -1])))
        input_ids = np.array([[made[-1]]], dtype=np.int64)
        mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
        pos = np.array([[mask.shape[1] - 1]], dtype=np.int64)
    return made, time.perf_counter() - start


def agreement(tokens: list[int], reference: list[int]) -> str:
    parted = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), len(reference))
    return f"{parted}/{len(reference)}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per reply (greedy, no early stop)")
    ap.add_argument("--reps", type=int, default=3, help="timed replies per path, alternating (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    ap.add_argument("--no-save", action="store_true", help="print only; do not append to bench/README.md")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    home = starter_home("llmdev-bench-export-")
    import torch

    from core.export import registry as exports
    from core.export.onnx import ExportOnnxSpec, OrtDecoder, load_for_export
    from core.inference import generate
    from core.jobs import lifecycle as jobs
    from core.models import registry as models

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    job = jobs.wait(jobs.submit(ExportOnnxSpec(model="starter", output_name="starter-onnx", int8=True, int4=True)), timeout_s=3600)
    assert job.status == "succeeded", job.log_tail
    export_s = time.perf_counter() - started
    row = exports.find("starter-onnx")
    folder = home / row.path
    model, tokenizer = load_for_export(models.find("starter"))
    text = generate.prompt_text(tokenizer, [{"role": "user", "content": PROMPT}])
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    graphs = {p: folder / f for p, f in row.details["graphs"].items()}
    decoders = {p: OrtDecoder(path, threads=args.threads) for p, path in graphs.items()}

    paths = {"PyTorch fp32": lambda: torch_reply(model, ids, args.tokens)}
    paths.update({f"onnxruntime {p}": (lambda d=d: ort_reply(d, ids[0].tolist(), args.tokens)) for p, d in decoders.items()})
    made = {name: run()[0] for name, run in paths.items()}  # warm-up, and the tokens compared
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.reps):  # alternating: drift on a shared machine hits every path
        for name, run in paths.items():
            times[name].append(run()[1])
    read = {"PyTorch fp32": torch_bytes(model), **{f"onnxruntime {p}": onnx_bytes(path) for p, path in graphs.items()}}
    bw = bandwidth()

    reference = made["PyTorch fp32"]
    rate = {name: args.tokens / statistics.median(t) for name, t in times.items()}
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"\n### {when} · {platform.node()} · {os.cpu_count()} cores · {args.threads} thread(s) · starter, batch 1, greedy, "
        f"{args.tokens} new tokens, {args.reps} alternating reps (median)\n",
        f"Memory read bandwidth (numpy sum, 1 thread): **{bw / 1e9:.1f} GB/s**. Export job (fp32 + int8 + 4-bit, verified): {export_s:.0f} s.\n",
        "| path | tokens/s | x PyTorch | greedy tokens equal to PyTorch | weights read per token (MB) | limit at that bandwidth (tokens/s) | of the limit | per rep (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in paths:
        limit = bw / read[name]
        lines.append(
            f"| {name} | {rate[name]:.2f} | {rate[name] / rate['PyTorch fp32']:.2f} | {agreement(made[name], reference)} "
            f"| {read[name] / 1e6:.0f} | {limit:.1f} | {rate[name] / limit:.0%} | {', '.join(f'{t:.2f}' for t in times[name])} |"
        )
    checks = row.verification
    lines.append("\nThe export's own verification (20 greedy steps, teacher-forced agreement): " + "; ".join(
        f"{p} {'ok' if c['ok'] else 'OUTSIDE TOLERANCE'} (max |logit diff| {c['max_abs_logit_diff']:.2g}, "
        f"argmax agreement {c['argmax_agreement']:.1%}, {c['bytes'] / 1e6:.0f} MB)" for p, c in checks.items()) + ".\n")
    publish(SECTION, lines, save=not args.no_save)


if __name__ == "__main__":
    main()
