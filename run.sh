#!/usr/bin/env bash
# ./run.sh        the demo: local S3 + Sentinel emulator, sample logs, the real dataflow.
# ./run.sh test   install what the tests need and run the whole suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

install() {
  # Re-install only when pyproject.toml changed since the last install.
  local stamp=".venv/.installed-$1"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    python -m pip install -q --upgrade pip
    python -m pip install -q -e ".[$1]"
    touch "$stamp"
  fi
}

install_kusto() {
  # The Kusto language service (npm) behind devstack/kusto, which the KQL tests run in node.
  # Re-install only when package-lock.json changed since the last install; npm ci writes
  # node_modules/.package-lock.json, touched here as the stamp.
  local dir=devstack/kusto
  local stamp="$dir/node_modules/.package-lock.json"
  if [ ! -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ]; then
    if ! command -v npm >/dev/null 2>&1; then
      echo "run.sh: npm not found; the tests need Node.js and npm to install the Kusto" \
        "language service ($dir/package.json). Install Node.js (with npm) and re-run." >&2
      exit 1
    fi
    npm ci --prefix "$dir" --no-audit --no-fund
    touch "$stamp"
  fi
}

cmd=${1:-demo}
case "$cmd" in
  test)
    shift
    install test
    install_kusto
    exec python -m pytest "$@"
    ;;
  demo)
    [ $# -gt 0 ] && shift
    install devstack
    exec python -m devstack.demo "$@"
    ;;
  *)
    echo "usage: ./run.sh [demo [--objects N --workers N] | test [pytest args]]" >&2
    exit 2
    ;;
esac
