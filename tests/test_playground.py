"""The playground: stop strings, early stop, the model cache, and the page (AppTest)."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core.inference import generate
from core.inference.cache import ModelCache, model_bytes
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec

PAGE = "pages/6_Playground.py"


def make(name: str, arch: str = "llama", seed: int = 3):
    job = jobs.wait(jobs.submit(CreateModelSpec(name=name, arch=arch, size="tiny", seed=seed)), timeout_s=120)
    assert job.status == "succeeded", job.log_tail
    return models.find(name)


@pytest.fixture
def tiny(home, prepared):
    prepared("playground-tiny", lambda: make("tiny"))
    return models.find("tiny")


@pytest.fixture
def two(home, prepared):
    prepared("playground-two", lambda: (make("tiny-a"), make("tiny-b", arch="gpt2")))
    return models.find("tiny-a"), models.find("tiny-b")


# --- stop strings and early stop -------------------------------------------------------


@pytest.mark.fast
def test_visible_text_holds_back_what_could_start_a_stop_string():
    assert generate.visible_text("Hello wor", ["world"]) == ("Hello ", False)
    assert generate.visible_text("Hello world!", ["world"]) == ("Hello ", True)
    assert generate.visible_text("Hello w", ["xyz"]) == ("Hello w", False)
    assert generate.visible_text("a\n\nb", ["\n\n", "b"]) == ("a", True)
    assert generate.visible_text("abc", []) == ("abc", False)
    assert generate.Settings(stop=["", "END"]).stop == ["END"]


def first_new_substring(text: str, n: int = 5) -> int:
    """The last position where a substring of length n appears for the first time."""
    return max(k for k in range(1, len(text) - n + 1) if text.find(text[k:k + n]) == k)


def test_a_stop_string_from_the_greedy_output_is_never_shown(home):
    row = make("tiny-gpt2", arch="gpt2")
    model, tok = generate.load(row)
    greedy, ran = generate.Settings(max_new_tokens=30, temperature=0), generate.Stats()
    full = "".join(generate.stream(model, tok, "Hello there", greedy, ran))
    k = first_new_substring(full)
    assert k > 5, f"the greedy output is too repetitive for this test: {full!r}"
    stop = full[k:k + 5]
    stats = generate.Stats()
    chunks = list(generate.stream(model, tok, "Hello there", generate.Settings(max_new_tokens=30, temperature=0, stop=[stop]), stats))
    assert "".join(chunks) == full[:k] and len(chunks) > 1
    assert stats.new_tokens < ran.new_tokens == 30  # generation stopped early
    # a stop string that never completes holds nothing back at the end
    never = full[-3:] + "\x00never"
    assert "".join(generate.stream(model, tok, "Hello there", generate.Settings(max_new_tokens=30, temperature=0, stop=[never]))) == full


def test_closing_the_stream_stops_generation_at_once(tiny):
    model, tok = generate.load(tiny)
    steps = []
    model.register_forward_hook(lambda *_: steps.append(1))  # one forward pass per new token
    greedy = generate.Settings(max_new_tokens=200, temperature=0)  # this model never says EOS greedily
    assert len(list(generate.stream(model, tok, "Hello", greedy))) == 200 and len(steps) == 200
    steps.clear()
    # a slow model (50 ms a token: 10 s for all 200), so that closing after the
    # first piece is sure to come long before the end, however busy the machine
    model.register_forward_hook(lambda *_: time.sleep(0.05))
    pieces = generate.stream(model, tok, "Hello", greedy)
    assert next(pieces)
    pieces.close()  # what a rerun or the Stop button does
    assert not [t for t in threading.enumerate() if t.name == "generate"]  # joined, not left running
    ran = len(steps)
    assert ran < 200, "generate() ran to the end after the stream was closed"
    time.sleep(0.2)
    assert len(steps) == ran  # nothing runs on after close() returns


def test_a_prompt_longer_than_the_context_is_refused_clearly(tiny):
    model, tok = generate.load(tiny)
    with pytest.raises(ValueError, match="this model reads at most 256: clear the conversation"):
        next(generate.stream(model, tok, "word " * 300, generate.Settings(max_new_tokens=8)))
    near_the_end = tok.decode(tok("word " * 300, add_special_tokens=False)["input_ids"][:250])
    stats = generate.Stats()
    list(generate.stream(model, tok, near_the_end, generate.Settings(max_new_tokens=100, temperature=0), stats))
    assert stats.prompt_tokens + stats.new_tokens <= 256


def test_two_streams_of_one_model_at_once_match_one_alone(tiny):
    """Side by side with the same model on both sides: two generate() threads share it."""
    model, tok = generate.load(tiny)
    greedy = generate.Settings(max_new_tokens=40, temperature=0)
    text = generate.prompt_text(tok, [{"role": "user", "content": "Hi"}], raw=True)
    alone = "".join(generate.stream(model, tok, text, greedy))
    live = {0: generate.stream(model, tok, text, greedy), 1: generate.stream(model, tok, "Other words", greedy)}
    got: dict[int, list[str]] = {0: [], 1: []}
    while live:  # one piece of each in turn, as the page does
        for i in list(live):
            try:
                got[i].append(next(live[i]))
            except StopIteration:
                del live[i]
    assert "".join(got[0]) == alone and len(got[1]) > 1


def test_stop_strings_in_the_generate_command(home, cli):
    row = make("tiny-gpt2", arch="gpt2")
    model, tok = generate.load(row)
    full = "".join(generate.stream(model, tok, "Hello there", generate.Settings(max_new_tokens=30, temperature=0)))
    k = first_new_substring(full)
    out = cli("generate", "--model", "tiny-gpt2", "--raw", "--max-new-tokens", "30", "--temperature", "0",
              "--stop", full[k:k + 5], "Hello there")
    assert out.returncode == 0, out.stderr
    assert out.stdout == full[:k] + "\n"


# --- the model cache ---------------------------------------------------------------------


def test_cache_evicts_the_least_recently_used_and_unloads(two):
    a, b = two
    cache = ModelCache(budget_bytes=10 * 2**20)
    model_a, _ = cache.get(a)
    size_a = model_bytes(model_a)
    model_b, _ = cache.get(b)
    assert cache.get(a)[0] is model_a  # a hit, and now a is the most recent
    assert [e["name"] for e in cache.entries()] == ["tiny-a", "tiny-b"]
    assert cache.used_bytes() == size_a + model_bytes(model_b)
    # room for one model: b, least recently used, goes
    assert cache.set_budget(size_a + 1000) == ["tiny-b"]
    assert [e["name"] for e in cache.entries()] == ["tiny-a"]
    # loading b now evicts a
    loaded_at = time.time()
    cache.get(b)
    assert [e["name"] for e in cache.entries()] == ["tiny-b"]
    entry = cache.entries()[0]
    assert entry["device"] == "cpu" and entry["mb"] > 0 and entry["last_used"] >= loaded_at  # stamped by this load
    assert cache.unload(b.id) and not cache.unload(b.id) and cache.entries() == []


def test_cache_loads_a_model_bigger_than_the_budget_alone_and_reloads_changed_files(two, home):
    a, b = two
    cache = ModelCache(budget_bytes=1000)
    cache.get(a)
    cache.get(b)
    (only,) = cache.entries()
    assert only["name"] == "tiny-b" and only["over_budget"]
    cache.set_budget(10 * 2**20)
    first = cache.get(b)[0]
    models.rename(b.id, "renamed")
    assert cache.get(models.get(b.id))[0] is first and cache.entries()[0]["name"] == "renamed"
    # the folder replaced (as a retrained model would be): loaded again
    folder = home / b.path
    shutil.copytree(folder, folder.with_name("copy"))
    shutil.rmtree(folder)
    folder.with_name("copy").rename(folder)
    assert cache.get(models.get(b.id))[0] is not first
    cache.clear()
    assert cache.entries() == [] and cache.used_bytes() == 0


# --- the page ----------------------------------------------------------------------------


@pytest.fixture
def app(home):
    st.cache_resource.clear()  # the model cache is process-global
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60)
    at.run()
    yield at
    st.cache_resource.clear()


def open_page(at: AppTest) -> AppTest:
    at.switch_page(PAGE).run()
    assert [e.value for e in at.exception] == []
    return at


def assistant_texts(at: AppTest) -> list[str]:
    return [m.markdown[-1].value for m in at.chat_message if m.name == "assistant"]


@pytest.mark.fast
def test_page_without_models_says_where_to_start(app):
    open_page(app)
    assert any("No models yet" in i.value for i in app.info)


def test_chat_streams_a_reply_with_stats_and_exports_it(app, tiny):
    open_page(app)
    app.number_input(key="chat_max_new").set_value(12)
    app.text_area(key="chat_system").input("Be brief.")
    app.chat_input(key="chat_prompt").set_value("Hello").run()
    assert [e.value for e in app.exception] == []
    assert [m.name for m in app.chat_message] == ["user", "assistant"]
    reply = app.chat_message[1]
    assert reply.markdown[0].value.strip() and reply.markdown[0].value != "_(empty reply)_"
    (line,) = [c.value for c in reply.caption]
    assert "new tokens" in line and "tokens/s" in line and "tiny" in line
    history = app.session_state["chat_history"]
    assert history[1]["done"] and 0 < history[1]["stats"]["new_tokens"] <= 12
    assert history[1]["system"] == "Be brief." and history[1]["settings"]["max_new_tokens"] == 12
    # the model stays loaded for the next reply, and the panel shows it
    assert any("**tiny**" in m.value and "· cpu · used" in m.value for m in app.sidebar.markdown)
    # a second turn keeps the history; Clear empties it
    app.chat_input(key="chat_prompt").set_value("And then?").run()
    assert [m.name for m in app.chat_message] == ["user", "assistant", "user", "assistant"]
    from ui.playground import export_json  # what the Export button downloads (AppTest cannot fetch its bytes)

    exported = json.loads(export_json("chat", app.session_state["chat_history"]))
    assert [m["role"] for m in exported["history"]] == ["user", "assistant", "user", "assistant"]
    # a prompt the model cannot read is refused in words, in the reply
    app.chat_input(key="chat_prompt").set_value("word " * 300).run()
    assert [e.value for e in app.exception] == []
    assert any("this model reads at most 256: clear the conversation" in e.value for e in app.error)
    app.button(key="chat_clear").click().run()
    assert app.session_state["chat_history"] == [] and not app.chat_message
    app.button(key=f"unload_{tiny.id}").click().run()
    assert any("No model is loaded" in c.value for c in app.sidebar.caption)


@pytest.mark.fast
def test_a_stopped_reply_says_so():
    from ui.playground import stats_line

    stats = {"prompt_tokens": 5, "new_tokens": 7, "seconds": 0.5, "tokens_per_s": 14.0}
    assert stats_line({"model": "m", "stats": stats, "done": True}) == "5 prompt tokens · 7 new tokens · 14.0 tokens/s · 0.5 s · m"
    assert stats_line({"model": "m", "stats": stats, "done": False}).startswith("stopped · 5 prompt tokens")
    assert stats_line({"model": "m", "stats": None, "done": False}) == "stopped before the first token"


def test_side_by_side_streams_two_answers(app, two):
    a, b = two
    open_page(app)
    app.selectbox(key="sbs_model_a").select(a.id)
    app.selectbox(key="sbs_model_b").select(b.id)
    app.number_input(key="sbs_max_new").set_value(10)
    app.chat_input(key="sbs_prompt").set_value("Compare").run()
    assert [e.value for e in app.exception] == []
    turn = app.session_state["sbs_history"][0]
    assert [r["model"] for r in turn["replies"]] == ["tiny-a", "tiny-b"]
    assert all(r["done"] and r["content"] and r["stats"]["new_tokens"] > 0 for r in turn["replies"])
    replies = [m for m in app.chat_message if m.name == "assistant"]
    assert len(replies) == 2
    assert all("tokens/s" in m.caption[0].value for m in replies)


def test_a_model_that_cannot_be_used_is_listed_with_the_reason(app, tiny, home):
    broken = make("broken")
    shutil.rmtree(home / broken.path)
    jobs.submit(CreateModelSpec(name="not-yet", size="tiny"), start=False)
    open_page(app)
    options = app.selectbox(key="chat_model").options
    assert options == [f"#{tiny.id} tiny"]
    captions = " ".join(c.value for c in app.caption)
    assert "Not available" in captions and "'broken' is missing files" in captions and "'not-yet' is creating" in captions
