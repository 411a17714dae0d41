#!/usr/bin/env bash
# Installs emcore (compiling the Cython core) with its test extra into a fresh
# virtual environment and runs the whole test suite against the installed
# package. Extra arguments go to pytest (e.g. `bash ci/test.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${EMCORE_TEST_VENV:-.venv-test}

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# the optional extras too (Dask, h5py, zarr, matplotlib, tqdm: wheels, ~30 s): with EMCORE_TEST_INSTALLED
# set, tests/test_distributed.py, test_sources.py, test_plot.py and the README's plot block must run, never skip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ".[test,dask,hdf5,zarr,plot,progress]"
# The example third-party plugin, as its own distribution next to emcore
# (tests/test_example_plugin.py needs it when EMCORE_TEST_INSTALLED is set).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ./examples/emcore-poisson

# The `pytest` script, not `python -m pytest` from the repository root: the latter
# would put the uncompiled source folder emcore/ first on sys.path (flat layout).
export EMCORE_TEST_INSTALLED=1
exec "$VENV/bin/pytest" tests "$@"
