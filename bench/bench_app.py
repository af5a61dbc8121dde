"""What a user gets with the app open, measured: the same short LoRA fine-tune of
the starter run three ways in one run, and a Playground reply two ways.

    .venv/bin/python bench/bench_app.py [--steps 10] [--tokens 96] [--rounds 3] [--label after]

SFT (batch 4, max length 256, LoRA r=8, as bench/bench_sft.py):
  1. no app: the job alone (submitted from this script);
  2. app running, no page open: `streamlit run Home.py` up, nobody looking;
  3. Training page open on the running job in headless Chromium (the Runs tab,
     nothing else driving it; this script only reads the page's Step every 2 s
     to record how far the page lags the database).
Per way: the trainer's tokens/s (non-padding tokens / train_runtime), the CPU
share of the app server and of Chromium (CPU seconds / wall seconds while the
job ran, 100% = one core), how often the job's threads were pre-empted
(involuntary context switches per second, all its threads: two torch threads
on two cores wait on each other when one is), and the job's torch threads
(from its environment.json, else torch's default).

Playground (the starter, the page's default settings, seed 0, N new tokens):
  a. `generate.stream` alone, in a fresh process with the thread choice the app
     makes (torch's default before the app chose one);
  b. the Playground page in Chromium streaming the same reply (the rate the
     page's own stats line reports, and the wall time to the finished reply).

With --rounds N, the no-app and page-open runs alternate N times and the table
gives each way's median round (this shared 2-core machine swings by 10-20%
between runs). Appends a dated table to the "With the app open" section of bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

import psutil

from common import ROOT, publish, starter_home
SECTION = "## With the app open (`bench/bench_app.py`)"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


# --- processes and their CPU ------------------------------------------------------


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by these processes and all their children."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


def preempted(pid: int) -> int:
    """Times the threads of this process and its children were taken off a core while
    they could still run (involuntary context switches, summed over every thread)."""
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            for task in os.listdir(f"/proc/{p.pid}/task"):
                with open(f"/proc/{p.pid}/task/{task}/status") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("nonvoluntary_ctxt_switches"))
        except (OSError, StopIteration):
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the Streamlit server did not answer within 90 s")


def stop_app(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def default_torch_threads() -> int:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


# --- SFT ---------------------------------------------------------------------------


def sft_job(steps: int, name: str, watch=None, app: subprocess.Popen | None = None, browser_pid: int | None = None,
            threads: int = 0) -> dict:
    """Submit the fine-tune, let `watch(job_id)` (the browser) look at it, wait, measure."""
    from core.jobs import lifecycle as jobs
    from core.training.sft import SFTSpec

    extra = {"threads": threads} if threads else {}
    spec = SFTSpec(model="starter", dataset="instructions", output_name=name, method="lora", max_steps=steps,
                   batch_size=4, learning_rate=2e-4, max_length=256, eval_steps=0, save_steps=10_000, **extra)
    job_id = jobs.submit(spec)
    sampler = watch(job_id) if watch else None
    cpu_pids = {"app": [app.pid] if app else [], "browser": [browser_pid] if browser_pid else []}
    while jobs.get(job_id).progress_message in ("queued", "starting worker", "loading") or jobs.get(job_id).progress_step == 0:
        if jobs.get(job_id).status not in jobs.ACTIVE:
            break
        time.sleep(0.5)
    worker_pid = jobs.get(job_id).pid
    t0, cpu0, pre0 = time.monotonic(), {k: tree_cpu(v) for k, v in cpu_pids.items()}, preempted(worker_pid)
    lags = []
    pre = pre0
    while (job := jobs.get(job_id)).status in jobs.ACTIVE:
        pre = max(pre, preempted(worker_pid))  # read while it runs: its threads are gone once it ends
        if sampler is not None and job.progress_message.startswith("step"):
            shown = sampler()
            if shown is not None:
                lags.append(max(0, jobs.get(job_id).progress_step - shown))
        time.sleep(2.0)
        jobs.refresh()
    wall = time.monotonic() - t0
    cpu = {k: (tree_cpu(v) - cpu0[k]) / wall * 100 for k, v in cpu_pids.items()}
    if job.status != "succeeded":
        raise SystemExit(f"the job failed: {job.error}\n{job.log_tail}")
    env = json.loads((jobs.run_dir(job_id) / "environment.json").read_text())
    r = job.result
    return {"tokens_per_s": r["train_tokens"] / r["train_runtime_s"], "app_cpu": cpu["app"], "browser_cpu": cpu["browser"],
            "threads": _threads_used(env), "page_lag_steps": max(lags) if lags else None,
            "preempted_per_s": (pre - pre0) / wall,
            "job_id": job_id}


def _threads_used(env: dict):
    """torch threads at the start, and where the job moved them while it ran ("1 -> 2")."""
    start = env.get("torch_threads_in_use")
    if start is None:
        return None
    return " -> ".join(str(n) for n in [start] + [c["to"] for c in (env.get("threads") or {}).get("changes", [])])


BENCH_ACCOUNT = ("bench", "bench-password-1")


def sign_in(page, port: int) -> None:
    """With sign-in on (--sign-in): the account's session, as a visitor gets it."""
    def kept() -> bool:
        return any(c["name"] == "llmdev_session" for c in page.context.cookies())

    if kept():
        return  # signed in at an earlier round: the cookie keeps it, as for a visitor who comes back
    page.goto(f"http://127.0.0.1:{port}/")
    page.locator(".st-key-sign_in_name input").fill(BENCH_ACCOUNT[0])
    page.locator(".st-key-sign_in_password input").fill(BENCH_ACCOUNT[1])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text(f"Signed in as {BENCH_ACCOUNT[0]}").first.wait_for(timeout=60_000)
    # the page keeps the session in a cookie by a request of its own: a new page load
    # before that request is done (the next goto) would find no session
    deadline = time.monotonic() + 30
    while not kept():
        if time.monotonic() > deadline:
            raise RuntimeError("signed in, but the session cookie was never set")
        page.wait_for_timeout(200)


def watch_training(page, port: int, signed_in: bool = False):
    def watch(job_id: int):
        if signed_in:
            sign_in(page, port)
        page.goto(f"http://127.0.0.1:{port}/Training")
        page.get_by_role("tab", name="Runs").click()
        # a live run's Step is drawn by the page's live component (ui/live.py), an ended one's by st.metric
        step = page.locator('.figure[data-label="Step"] .value').or_(page.get_by_test_id("stMetric").filter(has_text="Step"))
        step.first.wait_for(timeout=60_000)

        def shown_step():
            try:
                text = step.first.inner_text(timeout=2000)
            except Exception:
                return None
            m = re.search(r"(\d+)\s*/", text)
            return int(m.group(1)) if m else None

        return shown_step

    return watch


# --- Playground ---------------------------------------------------------------------


STREAM_ALONE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from core.inference import generate
from core.models import registry as models
reps, tokens = int(sys.argv[2]), int(sys.argv[3])
try:
    from core import threads
    threads.apply(threads.for_app().torch)  # the choice the app makes for the playground
except ImportError:  # a version before core/threads.py: torch's default
    pass
import torch
model, tok = generate.load(models.find("starter"))
text = generate.prompt_text(tok, [{"role": "user", "content": sys.argv[4]}])
out = []
for i in range(reps + 1):
    stats = generate.Stats()
    reply = "".join(generate.stream(model, tok, text, generate.Settings(max_new_tokens=tokens), stats))
    if i:
        out.append(stats.tokens_per_s)
print(json.dumps({"rates": out, "threads": torch.get_num_threads(), "text": reply}))
"""


def stream_alone(reps: int, tokens: int) -> dict:
    out = subprocess.run([sys.executable, "-c", STREAM_ALONE, str(ROOT), str(reps), str(tokens), PROMPT],
                         capture_output=True, text=True, env=dict(os.environ))
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def stream_in_page(page, port: int, reps: int, tokens: int, app: subprocess.Popen, browser_pid: int) -> dict:
    from playwright.sync_api import expect

    page.goto(f"http://127.0.0.1:{port}/Playground")
    page.get_by_text("System prompt and generation settings").first.click()
    box = page.locator(".st-key-chat_max_new input")
    box.fill(str(tokens))
    box.press("Enter")
    rates, walls, cpu = [], [], []
    for i in range(reps + 1):  # the first loads the model: not timed
        clear = page.get_by_role("button", name="Clear").first
        if clear.is_enabled():
            clear.click()
        expect(page.get_by_text(re.compile(r"new tokens · "))).to_have_count(0, timeout=30_000)
        t0, c0 = time.monotonic(), (tree_cpu([app.pid]), tree_cpu([browser_pid]))
        chat = page.get_by_test_id("stChatInput").first.locator("textarea")
        chat.fill(PROMPT)
        chat.press("Enter")
        caption = page.get_by_text(re.compile(r"new tokens · [\d.]+ tokens/s")).first
        caption.wait_for(timeout=300_000)
        wall = time.monotonic() - t0
        if i:
            rates.append(float(re.search(r"([\d.]+) tokens/s", caption.inner_text()).group(1)))
            walls.append(wall)
            cpu.append(((tree_cpu([app.pid]) - c0[0]) / wall * 100, (tree_cpu([browser_pid]) - c0[1]) / wall * 100))
    return {"rates": rates, "walls": walls, "app_cpu": statistics.median(c[0] for c in cpu),
            "browser_cpu": statistics.median(c[1] for c in cpu)}


# --- main ------------------------------------------------------------------------------


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=96, help="new tokens per Playground reply")
    ap.add_argument("--reps", type=int, default=3, help="timed Playground replies each way")
    ap.add_argument("--label", default="", help="a word for the table heading (before, after)")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--one-thread", action="store_true", help="also the no-app run with threads=1 in the spec")
    ap.add_argument("--quick", action="store_true", help="only no app and the page open; print, record nothing")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the no-app and page-open runs this many times")
    ap.add_argument("--sign-in", action="store_true", help="sign-in on: an account, the pages opened signed in")
    args = ap.parse_args()
    starter_home("llmdev-bench-app-")
    if args.sign_in:
        from core.access import accounts

        accounts.add(*BENCH_ACCOUNT, "admin", accounts.terminal())
    from playwright.sync_api import sync_playwright

    default_threads = default_torch_threads()

    # rounds: the no-app run and the page-open run alternate, so a slow spell of
    # this shared machine falls on both; the table gives each way's median round
    rounds: dict[str, list[dict]] = {"no app": [], "Training page open": []}
    sft: dict[str, dict] = {}
    for r in range(args.rounds):
        rounds["no app"].append(sft_job(args.steps, f"bench-alone-{r}"))
        if args.one_thread and r == 0:
            sft["no app, 1 thread (spec)"] = sft_job(args.steps, "bench-alone-1", threads=1)
        port = free_port()
        app = start_app(port)
        try:
            if not args.quick and r == 0:
                sft["app running, no page"] = sft_job(args.steps, "bench-app", app=app)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                browser_pid = next(c.pid for c in psutil.Process().children(recursive=True)
                                   if "chrom" in c.name() and "chrom" not in c.parent().name())
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                rounds["Training page open"].append(
                    sft_job(args.steps, f"bench-page-{r}", watch_training(page, port, args.sign_in), app, browser_pid))
                print(json.dumps(rounds), flush=True)
                if not args.quick and r == args.rounds - 1:
                    alone = stream_alone(args.reps, args.tokens)
                    in_page = stream_in_page(page, port, args.reps, args.tokens, app, browser_pid)
                browser.close()
        finally:
            stop_app(app)
    ratios = [p["tokens_per_s"] / a["tokens_per_s"] for a, p in zip(rounds["no app"], rounds["Training page open"])]
    for way, runs in rounds.items():
        sft[way] = sorted(runs, key=lambda run: run["tokens_per_s"])[len(runs) // 2]
    sft = {way: sft[way] for way in ("no app", "no app, 1 thread (spec)", "app running, no page", "Training page open") if way in sft}
    print("page open / no app, per round:", ", ".join(f"{x:.2f}" for x in ratios), flush=True)
    if args.quick:
        return

    base = sft["no app"]["tokens_per_s"]
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    label = (f" · {args.label}" if args.label else "") + (" · sign-in on" if args.sign_in else "")
    lines = [
        f"\n### {when}{label} · {platform.node()} · {os.cpu_count()} cores · {args.steps} LoRA steps on the starter; "
        f"Playground: {args.tokens} new tokens, {args.reps} replies (median)\n",
        "| SFT job | tokens/s | / no app | app CPU % | browser CPU % | job pre-empted /s | torch threads | page behind by (steps, max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for way, r in sft.items():
        threads = r["threads"] if r["threads"] is not None else f"{default_threads} (torch default)"
        lines.append(f"| {way} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base:.2f} | {fmt(r['app_cpu'])} | "
                     f"{fmt(r['browser_cpu'])} | {fmt(r['preempted_per_s'], '.0f')} | {threads} | {fmt(r['page_lag_steps'], 'd')} |")
    a, b = statistics.median(alone["rates"]), statistics.median(in_page["rates"])
    lines += [
        "",
        "| Playground reply | tokens/s | per reply | / alone | app CPU % | browser CPU % | torch threads |",
        "|---|---|---|---|---|---|---|",
        f"| `generate.stream` alone | {a:.2f} | {', '.join(f'{x:.1f}' for x in alone['rates'])} | 1.00 | - | - | {alone['threads']} |",
        f"| Playground page | {b:.2f} | {', '.join(f'{x:.1f}' for x in in_page['rates'])} | {b / a:.2f} | "
        f"{in_page['app_cpu']:.0f} | {in_page['browser_cpu']:.0f} | (the app's) |",
        f"\nPage reply wall time (submit to finished reply, median): {statistics.median(in_page['walls']):.1f} s.",
        *([f"\nRounds (no app, then the page open; the table shows each way's median): page open / no app = "
           f"{', '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f})."] if args.rounds > 1 else []),
    ]
    publish(SECTION, lines, save=not args.no_record)


if __name__ == "__main__":
    main()
