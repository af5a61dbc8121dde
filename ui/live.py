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
from core.jobs import lifecycle as jobs
from ui import access

POLL_S = 1.0
"""How often an open page asks the server."""
FALLBACK_S = 2.0
"""Without the API (the app started as `streamlit run Home.py`), a panel reruns this often."""

_JS = """
export default function ({ data, parentElement, setTriggerValue }) {
  // called again with new data at each rerun of the panel: one timer per panel
  const live = parentElement.__live || (parentElement.__live = {});
  Object.assign(live, { data, trigger: setTriggerValue, drawnAt: Date.now(), sentAt: 0 });
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
        changed = (await r.json()).state !== d.state;
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

_component = st.components.v2.component("llmdev_live", js=_JS)


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


def state(job_id: Optional[int] = None) -> str:
    """What a live panel is drawn from, as a short hash: the jobs queued, running
    and ended, each active job's step and message, and the watched job's status,
    step, message and metric points."""
    active = _active()
    parts: list = [jobs_signature(active), [(j.id, j.status, j.progress_step, j.progress_total, j.progress_message, j.cancel_requested_at is not None) for j in active]]
    if job_id is not None:
        job = jobs.get(job_id)
        parts.append((job.status, job.progress_step, job.progress_message, jobs.metrics_signature(job_id)))
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def follow(job_id: Optional[int] = None, refresh_s: float = 10.0) -> None:
    """Inside a fragment (no run_every): rerun it when its state changes (see the
    module), and after `refresh_s` (0: never) for the times it shows. Outside a
    fragment, the whole page reruns."""
    _component(
        key=f"llmdev_live_{'jobs' if job_id is None else job_id}",
        data={
            "url": "/api/live" + ("" if job_id is None else f"?job={job_id}"),
            "state": state(job_id),
            "poll_s": POLL_S,
            "fallback_s": FALLBACK_S,
            "refresh_s": refresh_s,
            "drawn": time.time(),  # new data at each rerun: the component starts its clocks again
        },
        on_changed_change=lambda: None,
        height=0,
    )


def _live(request: Request) -> JSONResponse:
    """GET /api/live[?job=ID]: {"state": ...}, the hash `follow` compares with.
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
        body, code = {"state": state(None if raw is None else int(raw))}, 200
    except jobs.JobNotFound as exc:
        body, code = {"error": str(exc)}, 404
    except Exception as exc:  # the database is away: the page falls back to reruns
        body, code = {"error": masking.one_line(f"{type(exc).__name__}: {exc}")}, 503
    return JSONResponse(body, status_code=code, headers={"Cache-Control": "no-store"})


ROUTES = [Route("/api/live", _live, methods=["GET"]), *access.ROUTES]
"""The app's own HTTP routes, served beside the pages (app.py): 401 without a session once sign-in is on."""
