"""The app's server: the pages (Home.py and pages/) and, beside them on the same
port, the small HTTP API their live panels poll (ui/live.py).

    streamlit run app.py        (what scripts/start.sh runs)

`streamlit run Home.py` still works; its live panels then rerun on a timer.
"""

import streamlit as st

from ui import live

app = st.App("Home.py", routes=live.ROUTES)
