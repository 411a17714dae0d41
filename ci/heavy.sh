#!/usr/bin/env bash
# The degenerate-data properties (tests/test_degenerate.py) at the heavy hypothesis
# profile: 2,000 examples per property (tests/conftest.py), derandomised. Runs
# against an already-installed virtual environment given as $1 (e.g. the one
# ci/test.sh built: `bash ci/heavy.sh .venv-test`), whose emcore has the test extra.
# Measured on the 2-core development machine (shared with other jobs): see the
# time printed at the end; it must stay under CI's budget (15 minutes here).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:?usage: ci/heavy.sh VENV (an installed virtual environment)}
export HYPOTHESIS_PROFILE=heavy
start=$(date +%s)
"$VENV/bin/pytest" tests/test_degenerate.py -q -p no:cacheprovider
echo "heavy profile: $(( $(date +%s) - start )) s"
