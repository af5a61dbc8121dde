"""Live panels without a clock: the page asks the app's server what changed and
reruns only then.

A live panel was a fragment rerun every second. Each rerun re-sends the panel's
elements and the browser renders them again, charts included, and on a laptop
that CPU is taken from the job being watched (bench/README.md, "With the app
open"). Now a small component in the panel polls `GET /api/live` (served beside
the pages by app.py: a few bytes, no rerun) and reruns its fragment only when
the state the panel was drawn from has changed: a job queued, started or ended,
a new step, message or metric point, or `refresh_s` passed so that elapsed
times move. A browser tab in the background does not poll.

Even a rerun of a panel with one number in it costs the browser ~0.1 CPU-second
here (Streamlit re-renders its app for each run), so a live run panel
(`follow(job, view=True)`) does not rerun at each step: the component itself shows the run's
moving numbers (status, step, elapsed, ETA, the main metric, the progress
line) from each poll's answer, and the panel reruns for its chart at most
every `min_rerun_s`, at once when a job starts or ends or the run's status
changes ("coarse" state).
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable, Optional

import streamlit as st
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.access import accounts, masking
from core.format import human_seconds
from core.jobs import lifecycle as jobs
from core.kinds import traits
from ui import access

POLL_S = 2.0
"""How often an open page asks the server (each poll wakes the browser and the app, and so
interrupts a job sharing their cores: bench/README.md, "With the app open")."""
FALLBACK_S = 2.0
"""Without the API (the app started as `streamlit run Home.py`), a panel reruns this often."""

_JS = """
export default function ({ data, parentElement, setTriggerValue }) {
  // called again with new data at each rerun of the panel: one timer per panel
  const live = parentElement.__live || (parentElement.__live = {});
  Object.assign(live, { data, trigger: setTriggerValue, drawnAt: Date.now(), sentAt: 0 });
  const show = (view) => {
    // the run's moving numbers, as text (never markup: a message is the job's words);
    // only what changed is written, so an unchanged number costs the browser no redraw
    if (!view) return;
    let root = parentElement.querySelector(".figures");
    if (!root) {
      root = document.createElement("div");
      root.className = "figures";
      parentElement.appendChild(root);
    }
    const wanted = [...view.figures, ["", view.line]];
    if (root.children.length !== wanted.length
        || wanted.some(([label], i) => root.children[i].dataset.label !== label)) {
      root.replaceChildren(...wanted.map(([label]) => {
        const cell = document.createElement("div");
        cell.dataset.label = label;
        if (label) {
          cell.className = "figure";
          const l = document.createElement("div"), v = document.createElement("div");
          l.className = "label";
          l.textContent = label;
          v.className = "value";
          cell.append(l, v);
        } else {
          cell.className = "line";
        }
        return cell;
      }));
    }
    wanted.forEach(([label, value], i) => {
      const target = label ? root.children[i].lastChild : root.children[i];
      if (target.textContent !== value) target.textContent = value;
    });
  };
  show(data.view);
  const stop = () => { clearInterval(live.timer); live.timer = null; };
  if (live.timer) return stop;
  const tick = async () => {
    const d = live.data, now = Date.now();
    if (document.hidden || live.busy || (live.sentAt && now - live.sentAt < 5000)) return;
    let changed = d.refresh_s > 0 && now - live.drawnAt >= d.refresh_s * 1000;
    if (!changed) {
      live.busy = true;
      try {
        const r = await fetch(d.url, { cache: "no-store" });
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        const got = await r.json();
        if (live.data === d) show(got.view);
        changed = got.coarse !== d.coarse || (got.state !== d.state && now - live.drawnAt >= d.min_rerun_s * 1000);
      } catch (e) {
        changed = now - live.drawnAt >= d.fallback_s * 1000;
      } finally {
        live.busy = false;
      }
    }
    if (changed && live.data === d) {
      live.sentAt = Date.now();
      live.trigger("changed", live.sentAt);
    }
  };
  live.timer = setInterval(tick, Math.max(250, data.poll_s * 1000));
  return stop;
}
"""

_CSS = """
.figures { display: grid; grid-template-columns: repeat(5, minmax(0, 1fr)); gap: 0 1rem; font-family: var(--st-font); color: var(--st-text-color); }
.label { font-size: 0.875rem; }
.value { font-size: 2.25rem; line-height: 1.6; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.line { grid-column: 1 / -1; font-size: 0.875rem; opacity: 0.6; padding-top: 0.5rem; }
"""

_component = st.components.v2.component("llmdev_live", js=_JS, css=_CSS)


def _active() -> list:
    return [j for j in jobs.list_jobs(limit=50) if j.status in jobs.ACTIVE]


def jobs_signature(active: Optional[list] = None) -> tuple:
    """Changes whenever a job is queued, starts or ends (`active`: the active
    jobs, when the caller has them already)."""
    ids = tuple(sorted(j.id for j in (_active() if active is None else active)))
    return ids, tuple(sorted(jobs.counts_by_status().items()))


def jobs_watcher() -> Callable[[], None]:
    """For a live fragment: call what this returns at the start of each fragment
    run. It notices lost workers and starts queued jobs (jobs.refresh), and reruns
    the whole page when a job is queued, starts or ends since the page ran, so
    counts, tables and lists follow."""
    seen = jobs_signature()

    def check() -> None:
        jobs.refresh()
        if jobs_signature() != seen:
            st.rerun()

    return check


def _hash(parts) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def answer(job_id: Optional[int] = None, view: bool = False) -> dict:
    """What a live panel compares with what it was drawn from: "state", a short
    hash of the jobs queued, running and ended, each active job's step and
    message, and the watched job's status, step, message and metric points;
    "coarse", the part of it that a run panel redraws for at once (the jobs
    queued, running and ended, the watched job's status and whether it has a
    point yet); with `view`, the watched job's moving numbers (`figures`)."""
    active = _active()
    signature = jobs_signature(active)
    parts: list = [signature, [(j.id, j.status, j.progress_step, j.progress_total, j.progress_message, j.cancel_requested_at is not None) for j in active]]
    coarse: list = [signature, [(j.id, j.status, j.cancel_requested_at is not None) for j in active]]
    out: dict = {}
    if job_id is not None:
        job = jobs.get(job_id)
        points = jobs.metrics_signature(job_id)
        parts.append((job.status, job.progress_step, job.progress_message, points))
        coarse.append((job.status, points[0] > 0))
        if view:
            out["view"] = figures(job)
    return {"state": _hash(parts), "coarse": _hash(coarse), **out}


def figures(job) -> dict:
    """A run's numbers on top of its panel: {"figures": [[label, text], ...],
    "line": progress in words}. Drawn by the page once the run has ended, by the
    live component at each poll while it runs."""
    p = jobs.progress(job)
    panels = getattr(traits(job.kind), "panels", None)  # a kind that trains: its first panel's first series
    main = panels[0][1][0] if panels else None
    last = jobs.last_metric(job.id, main) if main else None
    return {
        "figures": [
            ["Status", job.status],
            ["Step", f"{p.step}/{p.total or '?'}" if job.status != "queued" else "queued"],
            ["Elapsed", human_seconds(p.elapsed_s)],
            ["ETA", human_seconds(p.eta_s) if p.eta_s is not None else "-"],
            *([[main.replace("_", " ").capitalize(), f"{last:.3f}" if last is not None else "-"]] if main else []),
        ],
        "line": f"{p.fraction or 0:.0%} · {masking.one_line(p.message or '')}",
    }


def follow(job_id: Optional[int] = None, refresh_s: float = 10.0, view: bool = False, min_rerun_s: float = 0.0) -> None:
    """Inside a fragment (no run_every): rerun it when its state changes (see the
    module), and after `refresh_s` (0: never) for the times it shows. With `view`
    (a run panel; needs `job_id`), the component shows the run's `figures` itself,
    updated at each poll, and a change short of the coarse state reruns the
    panel only once `min_rerun_s` have passed since it was drawn. Outside a
    fragment, the whole page reruns."""
    now = answer(job_id, view)
    _component(
        key=f"llmdev_live_{'jobs' if job_id is None else job_id}",
        data={
            "url": "/api/live" + ("" if job_id is None else f"?job={job_id}" + ("&view=1" if view else "")),
            **now,
            "poll_s": POLL_S,
            "fallback_s": FALLBACK_S,
            "refresh_s": refresh_s,
            "min_rerun_s": min_rerun_s,
            "drawn": time.time(),  # new data at each rerun: the component starts its clocks again
        },
        on_changed_change=lambda: None,
        height="content" if view else 0,
    )


def _live(request: Request) -> JSONResponse:
    """GET /api/live[?job=ID[&view=1]]: `answer`, what `follow` compares with.
    Like a live panel's rerun did, each call notices lost workers and starts
    queued jobs. Once sign-in is on, only for a signed-in visitor (its cookie)."""
    try:
        if accounts.sign_in_on() and access.request_actor(request) is None:
            return JSONResponse({"error": "sign in first"}, status_code=401, headers={"Cache-Control": "no-store"})
    except Exception as exc:  # the database is away: the page falls back to reruns (and signs in again)
        return JSONResponse({"error": masking.one_line(f"{type(exc).__name__}: {exc}")}, status_code=503)
    raw = request.query_params.get("job")
    if raw is not None and not raw.isdigit():
        return JSONResponse({"error": f"job must be a job id (a number), not {raw!r}"}, status_code=400)
    try:
        jobs.refresh()
        body, code = answer(None if raw is None else int(raw), view=raw is not None and request.query_params.get("view") == "1"), 200
    except jobs.JobNotFound as exc:
        body, code = {"error": str(exc)}, 404
    except Exception as exc:  # the database is away: the page falls back to reruns
        body, code = {"error": masking.one_line(f"{type(exc).__name__}: {exc}")}, 503
    return JSONResponse(body, status_code=code, headers={"Cache-Control": "no-store"})


ROUTES = [Route("/api/live", _live, methods=["GET"]), *access.ROUTES]
"""The app's own HTTP routes, served beside the pages (app.py): 401 without a session once sign-in is on."""
