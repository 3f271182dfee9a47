#!/usr/bin/env bash
# The README's test command: sets everything up on a fresh machine, then runs the whole suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k dispatcher`).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

# Contract peer: prism serves Twilio's OpenAPI spec (tests/test_contract_prism.py).
PRISM_VERSION=5.16.0
if [ ! -x .cache/prism/node_modules/.bin/prism ]; then
  if command -v npm >/dev/null 2>&1; then
    npm install --prefix .cache/prism --no-audit --no-fund --silent "@stoplight/prism-cli@${PRISM_VERSION}"
  else
    echo "note: npm not found; the prism contract tests will be skipped (CI installs npm and fails without it)" >&2
  fi
fi

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
