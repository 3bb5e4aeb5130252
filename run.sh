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

cmd=${1:-demo}
case "$cmd" in
  test)
    shift
    install test
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
