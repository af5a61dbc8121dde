"""Playground: chat with any registered model or adapter, or send one prompt to two
models side by side; replies stream token by token."""

import streamlit as st

from ui import common, playground

common.setup_page("Playground", "forum")
st.title("Playground")
cache = playground.model_cache()
choices = playground.model_choices()

chat, side = st.tabs(["Chat", "Side by side"])
with chat:
    pending = playground.chat_tab(choices)
with side:
    pending += playground.side_by_side_tab(choices)
playground.loaded_models_panel(cache)
playground.stream_replies(cache, pending)  # last: the page is complete while replies stream
