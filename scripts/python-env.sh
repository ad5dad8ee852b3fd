#!/usr/bin/env bash
# Makes the Python environment the WebSocket tests use: a virtual environment at
# target/python-env (or $RINGEX_PYTHON_ENV) with the `websockets` client library from
# PyPI, pinned. Idempotent: an environment that already has that version is left as it
# is. Prints the environment's python on stdout (the last line), what it did on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR="${RINGEX_PYTHON_ENV:-target/python-env}"
# Absolute, so tests (which run in their crate's directory) can use the printed path.
case "$ENV_DIR" in /*) ;; *) ENV_DIR="$PWD/$ENV_DIR" ;; esac
WEBSOCKETS_VERSION="17.4"
PY="$ENV_DIR/bin/python"
if [ -x "$PY" ] && "$PY" -c "import websockets, sys; sys.exit(websockets.__version__ != '$WEBSOCKETS_VERSION')" 2>/dev/null; then
    echo "python-env: $ENV_DIR has websockets $WEBSOCKETS_VERSION" >&2
else
    echo "python-env: creating $ENV_DIR with websockets $WEBSOCKETS_VERSION (from PyPI)" >&2
    python3 -m venv "$ENV_DIR" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check "websockets==$WEBSOCKETS_VERSION" >&2
fi
echo "$PY"
