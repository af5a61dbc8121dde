"""Playground page pieces: model pickers, generation settings, the chat and
side-by-side tabs, streaming replies, and the loaded-models panel.

The tabs lay out the page and return the replies to stream; the page streams
them last (each piece updates a placeholder), so everything else is on screen
while a reply grows, and then reruns to show the result. A reply lives in
session_state as it grows: one that was stopped (the chat input's stop button,
or any rerun) stays in the history, marked as stopped, and closing its stream
stops the model's generate() too.
"""

from __future__ import annotations

import datetime
import json
import time
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional

import streamlit as st

from core import threads
from core.format import human_bytes, human_seconds, inert_markdown
from core.inference import generate
from core.inference.cache import GiB, ModelCache, default_budget
from core.models import registry as models
from storage.db import data_home, database_url
from ui import access

CURSOR = " ▌"
UPDATE_S = 0.08
"""A growing reply is sent to the page at most this often (not once per token:
each update re-sends the reply so far and the browser re-renders it)."""


# --- the model cache ------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _cache(db_url: str, home: str) -> ModelCache:
    """One cache per data home for the whole server (shared by every session)."""
    return ModelCache(default_budget())


def model_cache() -> ModelCache:
    return _cache(database_url(), str(data_home()))


def loaded_models_panel(cache: ModelCache) -> None:
    """Sidebar: the memory budget and what is loaded, with an Unload button each."""
    with st.sidebar:
        st.subheader("Loaded models")
        st.number_input(
            "Memory budget (GiB)", min_value=0.1, max_value=4096.0, value=round(cache.budget / GiB, 2), step=0.5,
            key="pg_budget", on_change=_set_budget, args=(cache,), disabled=not access.can_run(),
            help="Loaded models are kept for the next reply; the least recently used are unloaded beyond this.",
        )
        if st.session_state.get("pg_evicted"):
            st.toast(st.session_state.pop("pg_evicted"))
        entries = cache.entries()
        if not entries:
            st.caption("No model is loaded. The first reply of a model loads it.")
            return
        st.caption(f"{human_bytes(cache.used_bytes())} used of {human_bytes(cache.budget)}")
        now = time.time()
        for e in entries:
            st.markdown(
                f"**{e['name']}**  \n{human_bytes(e['mb'] * 2**20)} · {e['device']} · used {human_seconds(now - e['last_used'])} ago"
            )
            st.button("Unload", key=f"unload_{e['model_id']}", on_click=_unload, args=(cache, e["model_id"]),
                      type="tertiary", icon=":material/eject:", disabled=not access.can_run())
            if e["over_budget"]:
                st.warning("Bigger than the budget: loaded alone.", icon=":material/memory:")


def _unload(cache: ModelCache, model_id: int) -> None:
    if not access.refused("Unloading a model"):
        cache.unload(model_id)


def _set_budget(cache: ModelCache) -> None:
    if access.refused("Changing the memory budget"):
        return
    evicted = cache.set_budget(int(st.session_state["pg_budget"] * GiB))
    if evicted:
        st.session_state["pg_evicted"] = f"Unloaded to fit the budget: {', '.join(evicted)}"


# --- choosing a model and settings -------------------------------------------------


def model_choices() -> tuple[list, dict[int, str]]:
    """Every registered model, and why each one that cannot be used now can't."""
    rows = models.list_models()
    return rows, {r.id: why for r in rows if (why := generate.usable(r))}


def pick_model(label: str, key: str, choices: tuple[list, dict[int, str]], index: int = 0):
    """A model picker offering the usable models; the others are listed with the reason."""
    rows, blocked = choices
    usable = {r.id: r for r in rows if r.id not in blocked}
    if not rows:
        st.info("No models yet: add the starter model or create one on the **Models** page.")
        return None
    if usable and st.session_state.get(key) not in usable:
        st.session_state[key] = list(usable)[min(index, len(usable) - 1)]
    chosen = st.selectbox(
        label, list(usable), format_func=lambda i: _label(usable[i]), key=key,
        placeholder="No model can be used right now",
    )
    if blocked:
        st.caption("Not available: " + " · ".join(blocked.values()))
    return usable.get(chosen)


def _label(row) -> str:
    kind = " (adapter)" if row.source == "adapter" else ""
    return f"#{row.id} {row.name}{kind}"


def settings_inputs(prefix: str) -> Optional[tuple[str, generate.Settings]]:
    """(system prompt, settings) from the tab's Settings expander; None if invalid."""
    with st.expander("System prompt and generation settings"):
        system = st.text_area("System prompt", key=f"{prefix}_system", height=68, placeholder="optional")
        c = st.columns(4)
        values = dict(
            temperature=c[0].slider("Temperature (0 = greedy)", 0.0, 2.0, 0.7, 0.05, key=f"{prefix}_temperature"),
            top_p=c[1].slider("Top-p", 0.05, 1.0, 1.0, 0.05, key=f"{prefix}_top_p"),
            top_k=int(c[2].number_input("Top-k (0 = off)", 0, 100_000, 0, key=f"{prefix}_top_k")),
            max_new_tokens=int(c[3].number_input("Max new tokens", 1, 32768, 128, key=f"{prefix}_max_new")),
            repetition_penalty=c[0].number_input("Repetition penalty (1 = off)", 0.1, 5.0, 1.0, 0.05, key=f"{prefix}_rep"),
        )
        seed = int(c[1].number_input("Seed (-1 = random)", min_value=-1, max_value=2**31 - 1, value=0, key=f"{prefix}_seed"))
        stops = c[2].text_area("Stop strings, one per line (\\n = newline)", key=f"{prefix}_stop", height=68)
    try:
        settings = generate.Settings(
            **values, seed=None if seed < 0 else seed,
            stop=[line.replace("\\n", "\n") for line in stops.splitlines() if line],
        )
    except ValueError as exc:
        st.error(f"Check the settings: {exc}")
        return None
    return system.strip(), settings


# --- replies ------------------------------------------------------------------------


@dataclass
class Reply:
    """A reply to stream: what to send to which model, and where to show it."""

    row: Any
    messages: list[dict[str, str]]
    raw: bool
    settings: generate.Settings
    msg: dict
    """The reply in the history (session_state), filled as it streams."""
    slot: Any
    """st.empty() where the text grows."""


def _start(cache: ModelCache, r: Reply) -> Iterator[str]:
    """Load (or reuse) the model and start streaming its reply, with the threads
    that fit beside the running jobs and the browser (core/threads.py)."""
    threads.apply(threads.for_app().torch)
    if not cache.is_loaded(r.row):
        r.slot.markdown(f"_Loading {r.row.name}…_")
    model, tokenizer = cache.get(r.row)
    stats = generate.Stats()
    r.msg["_stats"] = stats
    r.msg["raw"] = r.raw
    return generate.stream(model, tokenizer, generate.prompt_text(tokenizer, r.messages, r.raw), r.settings, stats)


def stream_replies(cache: ModelCache, replies: list[Reply]) -> None:
    """Stream every pending reply at once, then rerun so the page (stats, export,
    loaded models) shows the result. Each model generates on its own thread; this
    loop takes the next piece of each in turn and updates its slot. A stop (the
    chat input's stop button, or any rerun) ends the loop and, through closing(),
    the generation; the replies keep what they had, marked as stopped."""
    if not replies:
        return
    with ExitStack() as stack:
        live: dict[int, Iterator[str]] = {}
        for i, r in enumerate(replies):
            try:
                live[i] = stack.enter_context(closing(_start(cache, r)))
            except Exception as exc:  # cannot load: said in the reply
                _finish(r.msg, exc)
        shown = {i: 0.0 for i in live}  # when each slot was last sent to the page
        while live:
            for i in list(live):
                r = replies[i]
                try:
                    piece = next(live[i])
                except StopIteration:
                    del live[i]
                    _finish(r.msg)
                    continue
                except Exception as exc:  # shown with the reply; a stop or rerun is not an Exception
                    del live[i]
                    _finish(r.msg, exc)
                    continue
                r.msg["content"] += piece
                _update(r.msg)
                now = time.monotonic()
                if now - shown[i] >= UPDATE_S:
                    shown[i] = now
                    r.slot.markdown(inert_markdown(r.msg["content"]) + CURSOR)
    st.rerun()


def _new_reply(row, system: str, settings: generate.Settings) -> dict:
    return {"role": "assistant", "content": "", "model": row.name, "model_id": row.id,
            "system": system, "settings": asdict(settings), "stats": None, "done": False}


def _update(msg: dict) -> None:
    stats: generate.Stats = msg.get("_stats") or generate.Stats()
    msg["stats"] = {"prompt_tokens": stats.prompt_tokens, "new_tokens": stats.new_tokens,
                    "seconds": round(stats.seconds, 3), "tokens_per_s": round(stats.tokens_per_s, 2)}


def _finish(msg: dict, error: Optional[BaseException] = None) -> None:
    _update(msg)
    msg.pop("_stats", None)
    msg["done"] = True
    if error is not None:  # a ValueError says what to do; anything else also says what it is
        msg["error"] = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"


def stats_line(msg: dict) -> str:
    s = msg.get("stats") or {}
    if not s:
        return "stopped before the first token" if not msg.get("done") else ""
    line = (f"{s['prompt_tokens']} prompt tokens · {s['new_tokens']} new tokens · "
            f"{s['tokens_per_s']:.1f} tokens/s · {s['seconds']:.1f} s · {msg['model']}")
    return line if msg.get("done") else f"stopped · {line}"


def show_reply(msg: dict) -> None:
    """An assistant reply as it stands, with its stats line (or error)."""
    st.markdown(inert_markdown(msg["content"]) or "_(empty reply)_")
    if msg.get("error"):
        st.error(f"Generation failed: {msg['error']}")
    elif line := stats_line(msg):
        st.caption(line)


def _messages(system: str, turns: list[tuple[str, str]], prompt: str) -> list[dict[str, str]]:
    out = [{"role": "system", "content": system}] if system else []
    for user, reply in turns:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return out + [{"role": "user", "content": prompt}]


def export_json(kind: str, history: list[dict]) -> str:
    """A conversation as JSON: every message, and per reply its model, system
    prompt, settings and stats."""
    return json.dumps(
        {"kind": kind, "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "history": [_public(item) for item in history]},
        indent=2, default=str,
    )


def _public(item: dict) -> dict:
    """Without the live objects (keys starting with _), also inside side-by-side turns."""
    out = {k: v for k, v in item.items() if not k.startswith("_")}
    if "replies" in out:
        out["replies"] = [_public(r) for r in out["replies"]]
    return out


def export_button(kind: str, history: list, key: str) -> None:
    data = export_json(kind, history)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    st.download_button("Export JSON", data, file_name=f"{kind}-{stamp}.json", mime="application/json",
                       key=key, on_click="ignore", disabled=not history, icon=":material/download:")


def _clear(key: str) -> None:
    st.session_state[key] = []


# --- the tabs ---------------------------------------------------------------------


def chat_tab(choices) -> list[Reply]:
    """The chat: history, the input, Clear and Export; returns the reply to stream."""
    history: list[dict] = st.session_state.setdefault("chat_history", [])
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    with c1:
        row = pick_model("Model", "chat_model", choices)
    if row is None:
        return []
    trained_here = bool((row.details or {}).get("method"))
    raw = c2.toggle("Raw completion", value=not row.has_chat_template and not trained_here, key=f"chat_raw_{row.id}",
                    help="Continue the text as is, without the model's chat template (base models).")
    if not row.has_chat_template and not raw:
        c2.caption("No chat template: the ### Instruction / ### Response layout fine-tuning uses.")
    picked = settings_inputs("chat")
    box = st.container()
    for msg in history:
        with box.chat_message(msg["role"]):
            if msg["role"] == "assistant":
                show_reply(msg)
            else:
                st.markdown(inert_markdown(msg["content"]))
    prompt = st.chat_input(f"Message {row.name}", key="chat_prompt", submit_mode="stop", disabled=picked is None or not access.can_run())
    pending = []
    if prompt and picked is not None:
        system, settings = picked
        turns = [(u["content"], a["content"]) for u, a in zip(history[::2], history[1::2])]
        msg = _new_reply(row, system, settings)
        history += [{"role": "user", "content": prompt}, msg]
        box.chat_message("user").markdown(inert_markdown(prompt))
        with box.chat_message("assistant"):
            pending.append(Reply(row, _messages(system, turns, prompt), raw, settings, msg, st.empty()))
    b1, b2, _ = st.columns([1, 1, 4])
    b1.button("Clear", key="chat_clear", on_click=_clear, args=("chat_history",), disabled=not history, icon=":material/delete:")
    with b2:
        export_button("chat", history, "chat_export")
    return pending


def side_by_side_tab(choices) -> list[Reply]:
    """One prompt to two models, answers in two columns; returns the replies to stream."""
    history: list[dict] = st.session_state.setdefault("sbs_history", [])
    c1, c2 = st.columns(2)
    with c1:
        a = pick_model("Model A", "sbs_model_a", choices)
    with c2:
        b = pick_model("Model B", "sbs_model_b", choices, index=1)
    if a is None or b is None:
        return []
    raw = st.toggle("Raw completion for both", value=False, key="sbs_raw",
                    help="Off: each model's chat template, or for a model without one the "
                         "### Instruction / ### Response layout fine-tuning uses.")
    picked = settings_inputs("sbs")
    box = st.container()
    for turn in history:
        box.chat_message("user").markdown(inert_markdown(turn["prompt"]))
        for col, msg in zip(box.columns(2), turn["replies"]):
            with col.chat_message("assistant"):
                st.markdown(f"**{msg['model']}**")
                show_reply(msg)
    prompt = st.chat_input("Send to both models", key="sbs_prompt", submit_mode="stop", disabled=picked is None or not access.can_run())
    pending = []
    if prompt and picked is not None:
        system, settings = picked
        msgs = [_new_reply(row, system, settings) for row in (a, b)]
        turns = [[(t["prompt"], t["replies"][i]["content"]) for t in history] for i in (0, 1)]
        history.append({"prompt": prompt, "replies": msgs})
        box.chat_message("user").markdown(inert_markdown(prompt))
        for i, (col, row, msg) in enumerate(zip(box.columns(2), (a, b), msgs)):
            with col.chat_message("assistant"):
                st.markdown(f"**{msg['model']}**")
                pending.append(Reply(row, _messages(system, turns[i], prompt), raw, settings, msg, st.empty()))
    b1, b2, _ = st.columns([1, 1, 4])
    b1.button("Clear", key="sbs_clear", on_click=_clear, args=("sbs_history",), disabled=not history, icon=":material/delete:")
    with b2:
        export_button("side-by-side", history, "sbs_export")
    return pending
