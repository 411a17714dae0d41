#!/usr/bin/env bash
# Builds the documentation site (docs/conf.py) into docs/_build/html with
# warnings as errors: the Markdown pages, the API reference from the docstrings,
# and the gallery, whose examples (docs/gallery/*.py) run during the build — a
# failing example, a broken link between pages or a docstring numpydoc cannot
# parse fails it. About a minute.
#
# Uses the environment EMCORE_TEST_VENV names (e.g. the one ci/test.sh built)
# if it exists, else creates .venv-docs; either way installs emcore with its
# `docs` extra there. Extra arguments go to sphinx-build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${EMCORE_TEST_VENV:-.venv-docs}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
VENV=$(cd "$VENV" && pwd)
# An environment that already has emcore (ci/test.sh's, built from this tree) gets
# only the extra's requirements (-I: the check imports the installed emcore, never
# the source folder); otherwise emcore is built and installed with them.
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if REQS=$("$VENV/bin/python" -I - 2>/dev/null <<'PY'
import emcore, tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["docs"]))
PY
); then
    mapfile -t REQS <<< "$REQS"
    "${PIP[@]}" "${REQS[@]}"
else
    "${PIP[@]}" ".[docs]"
fi

# Start from scratch: sphinx-gallery skips examples whose source did not change,
# and a stale build could hide a warning.
rm -rf docs/_build docs/auto_examples docs/sg_execution_times.rst
# Run from docs/ with the installed package (a flat layout: from the repository
# root, the uncompiled emcore/ folder would shadow it).
cd docs
exec "$VENV/bin/sphinx-build" -W --keep-going -b html . _build/html "$@"
