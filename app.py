"""The app's server: the pages (Home.py and pages/) and, beside them on the same
port, the small HTTP API their live panels poll (ui/live.py) and the sign-in
cookie's route (ui/access.py).

    streamlit run app.py        (what scripts/start.sh runs; 127.0.0.1 unless told otherwise)

Listening on anything but loopback needs sign-in (an account: python -m core users
add NAME --role admin); without one the server refuses to start.
`streamlit run Home.py` still works; its live panels then rerun on a timer.
"""

import sys

import streamlit as st

from ui import access, live

refusal = access.open_without_sign_in()
if refusal:
    print(f"llmdev: not starting: {refusal}.", file=sys.stderr, flush=True)
    raise SystemExit(2)

app = st.App("Home.py", routes=live.ROUTES)
