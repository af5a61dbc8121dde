#!/usr/bin/env bash
# Install what the tests need and run the whole suite:   bash scripts/test.sh
# (pip requirements into .venv, Triton's environment into .venv-triton,
# Debian's chromium + chromium-driver for the browser tests, faketime for the
# tests of machines whose clocks are off, bubblewrap to confine user code,
# Debian's postgresql for the PostgreSQL
# run, which this script starts on a private port and stops again, and a local
# Ray head for the Ray runner's tests, stopped again too).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

python=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.installed-dev-$(cat requirements.txt requirements-dev.txt requirements-starter.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install --upgrade pip >/dev/null
  .venv/bin/pip install -q -r requirements-dev.txt
  .venv/bin/pip install -q --no-deps -r requirements-starter.txt
  touch "$stamp"
fi

# Triton's own environment (nvidia-pytriton pins numpy<2): the deployment tests
# run a real tritonserver from it; without it (no network) they skip, saying why
.venv/bin/python -m core deploy setup-triton >/dev/null || echo "Triton's environment could not be made: its tests will skip" >&2

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/faketime ] || need+=(faketime)  # a machine whose clock is off (tests of heartbeats across hosts)
[ -x /usr/bin/bwrap ] || need+=(bubblewrap)  # user code confined: no network, its own folder (core/access/sandbox.py)
if [ ${#need[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# A throw-away PostgreSQL server for the PostgreSQL half of the suite.
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pgdata=$(mktemp -d /tmp/llmdev-pg.XXXXXX)
pgport=${LLMDEV_TEST_PG_PORT:-55432}
run_pg() { if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
[ "$(id -u)" -eq 0 ] && chown postgres "$pgdata"
run_pg "$pgbin/initdb -D $pgdata -A trust -U postgres >/dev/null"
run_pg "$pgbin/pg_ctl -D $pgdata -o '-p $pgport -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off' -l $pgdata/server.log -w start >/dev/null"
stop_pg() { run_pg "$pgbin/pg_ctl -D $pgdata -m fast -w stop >/dev/null" || true; rm -rf "$pgdata"; }
trap stop_pg EXIT
run_pg "$pgbin/createdb -h 127.0.0.1 -p $pgport -U postgres llmdev_test"
export LLMDEV_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$pgport/llmdev_test"

# A local Ray head for the Ray runner's tests (tests/test_ray.py): 2 CPUs, a small
# object store, on loopback; its jobs write to the PostgreSQL above.
raytmp=$(mktemp -d /tmp/llmdev-ray.XXXXXX)
rayport=${LLMDEV_TEST_RAY_PORT:-56379}
raydash=${LLMDEV_TEST_RAY_DASHBOARD_PORT:-58265}
RAY_USAGE_STATS_ENABLED=0 .venv/bin/ray start --head --num-cpus=2 --node-ip-address=127.0.0.1 \
  --port="$rayport" --dashboard-host=127.0.0.1 --dashboard-port="$raydash" \
  --object-store-memory=200000000 --disable-usage-stats --temp-dir="$raytmp" >"$raytmp/start.log" 2>&1 \
  || { cat "$raytmp/start.log" >&2; echo "the Ray head did not start: tests/test_ray.py will fail" >&2; }
# stop this head only (its processes name its temp dir or its port, or are their
# children), not a Ray the user runs beside it
stop_ray() {
  .venv/bin/python - "$raytmp" ":$rayport" <<'PY' || true
import sys, psutil
marks, me = sys.argv[1:], psutil.Process().pid
mine = [p for p in psutil.process_iter(["cmdline"])
        if p.pid != me and any(mark in part for mark in marks for part in p.info["cmdline"] or [])]
procs = {q.pid: q for p in mine for q in [p, *p.children(recursive=True)]}
for p in procs.values():
    try:
        p.terminate()
    except psutil.Error:
        pass
_, alive = psutil.wait_procs(list(procs.values()), timeout=10)
for p in alive:
    try:
        p.kill()
    except psutil.Error:
        pass
PY
  rm -rf "$raytmp"
}
stop_all() { stop_ray; stop_pg; }
trap stop_all EXIT
export LLMDEV_TEST_RAY_ADDRESS="http://127.0.0.1:$raydash"

cd "$root"
.venv/bin/python -m pytest "$@"
