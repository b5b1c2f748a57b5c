#!/bin/sh
# Run kvmkit's tests: build (or reuse from the cache) the fast guest kernel,
# then the whole suite, real-Linux-boot tests included.  Extra arguments go to
# pytest, e.g.  scripts/test.sh -m "not slow"  for the fast suite only.
set -eu
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
$PY -m kvmkit.cli.main guest build fast
exec $PY -m pytest -m "not stock" "$@"
