#!/usr/bin/env bash
# The compiled kernels' other code paths, compiled and tested on this machine.
#
# A normal build on x86-64 Linux with GCC runs the AVX2/FMA clone of every
# vector loop; two other paths ship: the baseline x86-64 clone (CPUs without
# AVX2) and the plain-C fallbacks (compilers without GNU C extensions, MSVC: a
# struct 4-double type, the scalar Lloyd step, the scalar soft posterior). For
# each, emcore is built from a copy of the sources into a venv of its own with
#
#   baseline   CFLAGS=-DEMC_NO_CLONES            (one version: the baseline code)
#   plain      CFLAGS=-DEMC_NO_GNU_EXTENSIONS    (every plain-C fallback)
#
# (emcore/include/emcore/vec4.h), the build is checked to have compiled that
# path (emcore.kernel._compiled_paths), and the kernel, thread, oracle, chain,
# float32 and discrete-family tests run against it. Arguments: the variants (default: baseline plain);
# after `--`, arguments for pytest. Scratch in build/kernels-fallback/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
WORK=$ROOT/build/kernels-fallback
PIP_QUIET=(--quiet --disable-pip-version-check)
TESTS=(tests/test_gaussian_kernels.py tests/test_kmeans.py tests/test_threads.py
       tests/test_sklearn_oracle.py tests/test_engine.py tests/test_float32.py
       tests/test_discrete_families.py)

variants=()
while [[ $# -gt 0 && $1 != -- ]]; do variants+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
[[ ${#variants[@]} -gt 0 ]] || variants=(baseline plain)

step() { echo; echo "== $* (at ${SECONDS}s)"; }
fail() { echo "ci/kernels_fallback.sh: $*" >&2; exit 1; }

rm -rf "$WORK"
mkdir -p "$WORK"
for variant in "${variants[@]}"; do
    case $variant in
        baseline) flags="-DEMC_NO_CLONES"
                  expect='{"gnu_vectors": true, "clones": false}' ;;
        plain)    flags="-DEMC_NO_GNU_EXTENSIONS"
                  expect='{"gnu_vectors": false, "clones": false}' ;;
        *) fail "unknown variant '$variant' (baseline or plain)" ;;
    esac
    step "$variant: build with CFLAGS=$flags"
    # A fresh copy of the sources: no generated C or compiled module of another
    # build (setuptools would reuse a build/ folder's objects whatever the flags).
    SRC=$WORK/$variant/src
    VENV=$WORK/$variant/venv
    mkdir -p "$SRC"
    cp -R emcore plugins setup.py pyproject.toml MANIFEST.in README.md LICENSE CHANGELOG.md "$SRC/"
    find "$SRC" \( -name "*.c" -o -name "*.so" -o -name "*.pyd" -o -name __pycache__ \) -prune \
        -exec rm -rf {} +
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install "${PIP_QUIET[@]}" "setuptools>=77" "Cython>=3.0" numpy scipy
    CFLAGS="${CFLAGS:-} $flags" "$VENV/bin/python" -m pip install "${PIP_QUIET[@]}" \
        --no-build-isolation "$SRC[test]" >"$WORK/$variant/build.log" 2>&1 \
        || { tail -n 60 "$WORK/$variant/build.log"; fail "the $variant build failed (log above)"; }

    step "$variant: the compiled paths, then the kernel, thread, oracle, chain, float32 and discrete tests"
    got=$(cd "$WORK" && "$VENV/bin/python" -c "import json, emcore.kernel as k; print(json.dumps(k._compiled_paths()))")
    [[ $got == "$expect" ]] || fail "the $variant build compiled $got, expected $expect"
    echo "compiled paths: $got"
    # the pytest script from the repository root, as ci/test.sh (the installed emcore)
    EMCORE_TEST_INSTALLED=1 "$VENV/bin/pytest" -p no:cacheprovider -q "${TESTS[@]}" "$@"
done
step "done: ${variants[*]}"
