#!/usr/bin/env bash
# Installs emcore into a fresh virtual environment and runs `emcore demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${EMCORE_DEMO_VENV:-.venv}
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check .
exec "$VENV/bin/emcore" demo "$@"
